"""What a Redis error means and what to do (connections, re-AUTH, the probes of caches and Celery)."""

from __future__ import annotations

from typing import Any

from ..diagnostics import ServiceFailure, generic, text_of


def diagnose_error(
    exc: BaseException | None, where: Any, username: str | None = None, oid: str | None = None
) -> ServiceFailure:
    """A Redis error (``exc``), or ``exc=None`` for a USERNAME that is not the token's object id. ``where``:
    the cache (``CACHES['default']``), or the client's EntraSettings, which name its own settings."""
    from redis.exceptions import AuthenticationError

    if isinstance(where, str):
        username_key = f"{where}['OPTIONS']['MANAGED_IDENTITY']['USERNAME']"
        location, service = f"{where}['LOCATION']", where
    else:
        username_key, location, service = where.key("username"), where.location, where.location
    facts = {"username": username, "oid": oid}
    access = ServiceFailure(
        "access-refused",
        "Redis refused the identity: USERNAME is not the identity's object id, or it has no access policy.",
        f"Leave {username_key} unset (the token's oid is used) or set it "
        "to the token's oid, and give that oid an access policy assignment (Azure Managed Redis: az "
        "redisenterprise database access-policy-assignment create --access-policy-name default --object-id "
        "<oid> ...; Azure Cache for Redis: az redis access-policy-assignment create --access-policy-name "
        "'Data Owner' --object-id <oid> ...). manage.py azure_setup prints the exact commands.",
        facts,
    )
    if exc is None or isinstance(exc, AuthenticationError):
        if username and oid and username != oid:
            return ServiceFailure(
                "username-mismatch",
                f"{username_key} is {username!r} but the token's object id is "
                f"{oid!r} (Redis would answer WRONGPASS): they must match.",
                access.fix,
                facts,
            )
        return access
    text = text_of(exc).lower()
    sharded = _sharded(exc, text, where)
    if sharded is not None:
        return sharded
    if any(word in text for word in ("ssl", "tls", "connection closed", "reset by peer")):
        return ServiceFailure(
            "tls",
            "TLS problem between Django and Redis.",
            f"Use rediss:// in {location} (port 6380 for Azure Cache for Redis, 10000 for Azure "
            "Managed Redis).",
        )
    return generic("Redis", service, exc)


def _sharded(exc: BaseException, text: str, where: Any) -> ServiceFailure | None:
    """MOVED (a cluster endpoint, a client that is not cluster-aware) and CROSSSLOT (keys of one
    transaction or command in several hash slots): Azure Managed Redis's OSS and Enterprise policies."""
    from redis.exceptions import ClusterCrossSlotError, MovedError

    celery = not isinstance(where, str)
    if isinstance(exc, MovedError) or text.startswith("moved "):
        fix = (
            f"Set {where.where}['cluster'] = 'auto' (the default on *.redis.azure.net hosts)."
            if celery
            else f"Set {where}['OPTIONS']['CLUSTER'] = 'auto' with CLIENT_CLASS "
            "'django_azure_mi.cache.EntraClient' (django-redis), or ['OPTIONS']['cluster'] = 'auto' "
            "(django_azure_mi.cache.RedisCache); 'auto' is the default on *.redis.azure.net hosts."
        )
        return ServiceFailure(
            "cluster-endpoint",
            "Redis answered MOVED: the endpoint is a cluster (Azure Managed Redis with the OSS clustering "
            "policy) and this client talks to it as to one server.",
            fix,
        )
    if isinstance(exc, ClusterCrossSlotError) or "crossslot" in text or "same slot" in text:
        fix = (
            f"Give every key one hash tag: {where.where}['global_keyprefix'] = '{{celery}}:' (the default "
            "on *.redis.azure.net hosts, and with 'cluster': 'auto')."
            if celery
            else f"Use CLIENT_CLASS 'django_azure_mi.cache.EntraClient' in {where}['OPTIONS'] (django-redis) "
            "or BACKEND 'django_azure_mi.cache.RedisCache'; in your own code keep the keys of one "
            "transaction, script or multi-key command under one hash tag ('{user42}:cart', "
            "'{user42}:orders')."
        )
        return ServiceFailure(
            "cross-slot",
            "Redis refused a command whose keys are in several hash slots (CROSSSLOT): Azure Managed Redis "
            "with the OSS or Enterprise clustering policy shards the keys.",
            fix,
        )
    return None


def diagnose(exc: BaseException, where: str) -> ServiceFailure:
    return diagnose_error(exc, where)
