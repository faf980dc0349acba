"""Redis with Microsoft Entra ID tokens: a django-redis connection factory and a backend for Django's
built-in RedisCache.

    CACHES = {"default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "rediss://cache.redis.cache.windows.net:6380/0",
        "OPTIONS": {"CONNECTION_FACTORY": "django_azure_mi.cache.EntraConnectionFactory",
                    "MANAGED_IDENTITY": {"USERNAME": "<object id>"}},   # + CLIENT_ID, SCOPE
    }}
    # or "BACKEND": "django_azure_mi.cache.RedisCache" with the same "MANAGED_IDENTITY" option.

``auth`` (identity, user name, re-AUTH schedule), ``connection`` (redis-py connections and pools that AUTH
and re-AUTH), ``factory`` (django-redis), ``backend`` (Django's RedisCache). This works for any number of
pools per identity (Django's RedisCache makes one per thread), which redis-py's own
``StreamingCredentialProvider`` (one ``on_next`` callback) does not. A connection the server closed anyway is
replaced transparently (retries on ConnectionError).
"""

from .auth import OPTION, EntraAuth, EntraSettings, check_location, get_auth, parse_options
from .backend import RedisCache
from .connection import EntraConnectionMixin, EntraConnectionPool, entra_connection_class
from .factory import EntraConnectionFactory

__all__ = [
    "OPTION",
    "EntraAuth",
    "EntraConnectionFactory",
    "EntraConnectionMixin",
    "EntraConnectionPool",
    "EntraSettings",
    "RedisCache",
    "check_location",
    "entra_connection_class",
    "get_auth",
    "parse_options",
]
