"""Appended to each settings module of django-redis's own test suite (by redis_suite.py): points its caches at
the enforcing Redis stand-in, as stock django-redis with an ACL password or with our connection factory and
tokens, from ``DJANGO_REDIS_SUITE`` in the environment."""

import json
import os
from typing import Any

_TARGET = json.loads(os.environ["DJANGO_REDIS_SUITE"])
_LOCAL = "redis://127.0.0.1:6379"  # where django-redis's settings expect a server


def rewrite(caches: dict[str, Any]) -> dict[str, Any]:
    for cache in caches.values():
        location = cache.get("LOCATION")
        if isinstance(location, list):
            cache["LOCATION"] = [item.replace(_LOCAL, _TARGET["url"]) for item in location]
        elif isinstance(location, str):
            cache["LOCATION"] = location.replace(_LOCAL, _TARGET["url"])
        if _TARGET["url"] not in str(cache.get("LOCATION")):
            continue  # "doesnotexist": a port nothing listens on, as django-redis meant it
        options = cache.setdefault("OPTIONS", {})
        pool_kwargs = options.setdefault("CONNECTION_POOL_KWARGS", {})
        pool_kwargs["ssl_ca_certs"] = _TARGET["ca_file"]
        if _TARGET["ours"]:
            options["CONNECTION_FACTORY"] = "django_azure_mi.cache.EntraConnectionFactory"
            options["MANAGED_IDENTITY"] = {}
    return caches
