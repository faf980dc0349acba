"""Appended to each settings module of django-redis's own test suite (by redis_suite.py): points its caches at
the enforcing Redis stand-in, as stock django-redis with an ACL password or with our connection factory and
tokens, from ``DJANGO_REDIS_SUITE`` in the environment."""

import json
import os
import re
from typing import Any

_TARGET = json.loads(os.environ["DJANGO_REDIS_SUITE"])
_LOCAL = "redis://127.0.0.1:6379"  # where django-redis's settings expect a server
_DEFAULT_CLIENT = "django_redis.client.DefaultClient"


def _moved(location: str) -> str:
    location = location.replace(_LOCAL, _TARGET["url"])
    if _TARGET.get("amr"):  # Azure Managed Redis has database 0 only: what its users write
        location = re.sub(r"([?&]db=)\d+", r"\g<1>0", location)
    return location


def rewrite(caches: dict[str, Any]) -> dict[str, Any]:
    for cache in caches.values():
        location = cache.get("LOCATION")
        if isinstance(location, list):
            cache["LOCATION"] = [_moved(item) for item in location]
        elif isinstance(location, str):
            cache["LOCATION"] = _moved(location)
        if _TARGET["url"] not in str(cache.get("LOCATION")):
            continue  # "doesnotexist": a port nothing listens on, as django-redis meant it
        options = cache.setdefault("OPTIONS", {})
        pool_kwargs = options.setdefault("CONNECTION_POOL_KWARGS", {})
        pool_kwargs["ssl_ca_certs"] = _TARGET["ca_file"]
        if _TARGET["ours"]:
            options["CONNECTION_FACTORY"] = "django_azure_mi.cache.EntraConnectionFactory"
            options["MANAGED_IDENTITY"] = {}
            if _TARGET.get("amr"):  # Azure Managed Redis: as our docs set it up (other clients stay)
                options["CLUSTER"] = "auto"
                if options.get("CLIENT_CLASS", _DEFAULT_CLIENT) == _DEFAULT_CLIENT:
                    options["CLIENT_CLASS"] = "django_azure_mi.cache.EntraClient"
    return caches
