"""The fleet site's Celery app (``celery -A fleet_celery worker``): Django settings with the CELERY_ prefix
(fleet_settings, from the test's FLEET_CONFIG)."""

import os
import time

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet_settings")

app = Celery("fleet")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def total(values: list[int]) -> int:
    return sum(values)


@app.task
def record(key: str) -> int:
    """Counts its own runs in the cache (duplicates show as counts above 1)."""
    from django.core.cache import cache

    try:
        return cache.incr(f"runs:{key}")
    except ValueError:
        cache.set(f"runs:{key}", 1, 3600)
        return 1


@app.task
def pause(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
