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
        "to the token's oid, and give that oid an access policy: az redis access-policy-assignment create "
        "--object-id <oid> --access-policy-name 'Data Owner' ...",
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
    if any(word in text for word in ("ssl", "tls", "connection closed", "reset by peer")):
        return ServiceFailure(
            "tls",
            "TLS problem between Django and Redis.",
            f"Use rediss:// in {location} (port 6380 for Azure Cache for Redis, 10000 for Azure "
            "Managed Redis).",
        )
    return generic("Redis", service, exc)


def diagnose(exc: BaseException, where: str) -> ServiceFailure:
    return diagnose_error(exc, where)
