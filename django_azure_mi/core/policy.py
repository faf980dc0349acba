"""When to refresh, when to retry: pure functions of times (epoch seconds), shared by every renewal.

Tokens, the Redis re-AUTH schedule and user delegation keys all take their timing from here, so the rules
(margin, jitter, backoff, the upstream cache window) are written once.
"""

from __future__ import annotations

import random
from typing import Final

# A token is handed out until this long before it expires (at most 10 % of its lifetime, for short test TTLs).
EXPIRY_BUFFER: Final = 30.0
# Jitter on the refresh time: up to this many seconds (at most 5 % of the lifetime) earlier.
REFRESH_JITTER: Final = 60.0
# azure-identity (MSAL) answers from its own cache until a token has less than this left (or passed its
# refresh_on); asking earlier returns the token we already hold.
UPSTREAM_CACHE_WINDOW: Final = 300.0
# Microsoft asks Redis clients to re-AUTH at least 3 minutes before the token expires, with jitter.
REAUTH_MARGIN: Final = 180.0
REAUTH_JITTER: Final = 60.0  # at most 10 % of the token's lifetime
# User delegation keys: renew in the background once this fraction of the key's life remains.
KEY_RENEW_FRACTION: Final = 0.25
# A token that lives less than this is refused (a failure: retried with backoff, never in a hot loop).
# Managed identity tokens live hours; only a broken or hostile endpoint issues shorter ones.
MIN_LIFETIME: Final = 3.0
# The floor between two scheduled refreshes of one token, whatever the margin or the issuer's refresh_on.
MIN_REFRESH_INTERVAL: Final = 2.0


def usable_until(expires_on: float, acquired_at: float) -> float:
    """Until when a token may be handed out: a little before it expires."""
    lifetime = max(1.0, expires_on - acquired_at)
    return expires_on - min(EXPIRY_BUFFER, lifetime * 0.1)


def refresh_due(expires_on: float, acquired_at: float, margin: float, refresh_on: float | None) -> float:
    """When to renew a token: ``margin`` before expiry, never in the first half of its life (short TTLs),
    earlier if the issuer said so (``refresh_on``), and never sooner than MIN_REFRESH_INTERVAL after it was
    acquired."""
    lifetime = max(1.0, expires_on - acquired_at)
    due = expires_on - min(margin, lifetime / 2)
    if refresh_on and acquired_at < refresh_on < due:
        due = float(refresh_on)
    return max(due, acquired_at + MIN_REFRESH_INTERVAL)


def jitter(expires_on: float, acquired_at: float) -> float:
    """Seconds to refresh early: random, up to REFRESH_JITTER or 5 % of the token's lifetime, so that N
    processes holding the same token don't all refresh at the same instant."""
    return random.uniform(0, min(REFRESH_JITTER, (expires_on - acquired_at) * 0.05))


def backoff(failures: int, base: float, cap: float, valid_for: float) -> float:
    """Delay before retry number ``failures`` (1, 2, ...): capped exponential with jitter, and short enough
    to try at least twice more while the value in hand is still valid for ``valid_for`` seconds."""
    delay = min(cap, base * 2.0 ** min(failures - 1, 30)) * random.uniform(0.5, 1.0)
    if valid_for > 0:
        delay = min(delay, max(base, valid_for / 3))
    return delay


def upstream_cache_retry(now: float, expires_on: float, usable_until: float, base: float) -> float:
    """The credential answered from its own cache: when to ask again (once that cache lets go)."""
    retry_at = expires_on - UPSTREAM_CACHE_WINDOW + random.uniform(1.0, 10.0)
    return max(now + base, min(retry_at, usable_until - base))


def reauth_margin(expires_on: float, issued_at: float) -> float:
    """How long before a token's expiry a Redis connection AUTHed with it re-AUTHs."""
    return min(REAUTH_MARGIN, max(1.0, expires_on - issued_at) * 0.25)


def reauth_due(expires_on: float, issued_at: float) -> float:
    """When a Redis connection AUTHed with this token should re-AUTH (jittered per connection)."""
    lifetime = max(1.0, expires_on - issued_at)
    jittered = random.uniform(0, min(REAUTH_JITTER, lifetime * 0.1))
    return expires_on - reauth_margin(expires_on, issued_at) - jittered


def sweep_interval(expires_on: float, issued_at: float) -> float:
    """How often idle Redis connections are looked at: a quarter of the re-AUTH margin, 50 ms to 5 s."""
    return max(0.05, min(5.0, reauth_margin(expires_on, issued_at) / 4))


def key_renew_at(fetched_at: float, expiry: float) -> float:
    """When to renew a user delegation key in the background."""
    return expiry - (expiry - fetched_at) * KEY_RENEW_FRACTION
