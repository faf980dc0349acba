"""A small site for the fleet test (tests/test_fleet.py): its database and cache on the stand-ins, from the
FLEET_CONFIG environment variable the test writes."""

import json
import os

_config = json.loads(os.environ["FLEET_CONFIG"])

SECRET_KEY = "fleet-test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_azure_mi"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "fleet_urls"
USE_TZ = True
DATABASES = {"default": {**_config["database"], "CONN_MAX_AGE": 60, "CONN_HEALTH_CHECKS": True}}
if _config.get("pool"):  # Django's psycopg pool instead of persistent connections
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {**DATABASES["default"].get("OPTIONS", {}), "pool": {"min_size": 1}}
CACHES = {"default": _config["cache"]}
if _config.get("storage"):  # the sync view also asks Blob Storage (a HEAD with a bearer token, a signed URL)
    STORAGES = {
        "default": _config["storage"],
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
AZURE_MANAGED_IDENTITY = _config.get("identity", {})
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_azure_mi": {"handlers": ["console"], "level": _config.get("log_level", "WARNING")},
        "django.request": {
            "handlers": ["console"],
            "level": "ERROR",
        },  # a 500's traceback, in the test output
    },
}

# django-rq (tests/test_rq.py): its queue on the cache's Redis, through django-redis and our factory
if _config.get("rq"):
    INSTALLED_APPS.append("django_rq")
    RQ_QUEUES = {"default": {"USE_REDIS_CACHE": "default"}}

# Celery (tests/fleet_site/fleet_celery.py), when the test gives its settings (RedisStandIn.celery_settings)
for _name, _value in (_config.get("celery") or {}).items():
    globals()[f"CELERY_{_name.upper()}"] = _value
