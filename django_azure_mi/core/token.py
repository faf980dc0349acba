"""``Token``: one access token and everything derived from it, computed once when it arrives."""

from __future__ import annotations

import math
import time
from typing import Any, Final

import jwt
from azure.core.credentials import AccessToken, AccessTokenInfo

from . import policy


class SafeAccessToken(AccessToken):
    """An ``AccessToken`` whose repr does not show the token (Django's debug page prints locals)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"AccessToken(token=<{len(self.token)} chars>, expires_on={self.expires_on})"


class SafeAccessTokenInfo(AccessTokenInfo):
    """An ``AccessTokenInfo`` whose repr does not show the token."""

    def __repr__(self) -> str:
        return (
            f"AccessTokenInfo(token=<{len(self.token)} chars>, expires_on={self.expires_on}, "
            f"token_type={self.token_type!r}, refresh_on={self.refresh_on})"
        )


def claimed_lifetime(claims: dict[str, Any]) -> float | None:
    """``exp`` - ``iat`` of a JWT's claims (how long its issuer made it live), or None. Both claims are on the
    issuer's clock; their difference holds whatever the skew between that clock and ours."""
    exp, iat = claims.get("exp"), claims.get("iat")
    if isinstance(exp, (int, float)) and isinstance(iat, (int, float)) and exp > iat:
        return float(exp - iat)
    return None


MAX_TOKEN_LENGTH: Final = 64 * 1024  # Entra tokens are a few kB; anything this large is not a token
MAX_LIFETIME: Final = 25 * 3600.0  # Entra issues managed identity tokens for up to 24 h


def checked(
    info: AccessTokenInfo, asked_at: float, source: str, margin: float, origin: str, now: float | None = None
) -> Token:
    """THE checks every token passes before it is served, wherever it came from (the identity endpoint,
    the file cache): a JWT of sane size with an expiry; ``expires_on`` not beyond the lifetime the JWT
    itself claims (``exp - iat``, skew-free) counted from ``asked_at``; at least ``policy.MIN_LIFETIME``
    and at most ``MAX_LIFETIME`` left (from ``now``, default the system clock's). Raises ValueError saying
    what ``origin`` returned (never the token)."""
    now = time.time() if now is None else now
    value = info.token
    if not isinstance(value, str) or not value:
        raise ValueError(f"{origin} returned an empty token")
    if len(value) > MAX_TOKEN_LENGTH:
        raise ValueError(f"{origin} returned {len(value)} characters (at most {MAX_TOKEN_LENGTH})")
    expires_on, refresh_on = info.expires_on, info.refresh_on
    if not _finite(expires_on) or not _finite(asked_at):
        raise ValueError(f"{origin} returned no usable expiry")
    try:
        claims = jwt.decode(value, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise ValueError(f"{origin} returned something that is not a JWT") from None
    if not _finite(claims.get("exp")):
        raise ValueError(f"{origin} returned a JWT without an expiry (exp)")
    # Never believe an expires_on beyond what the JWT itself allows. Its exp is on the issuer's clock, which
    # may be minutes off ours (expires_on comes from expires_in, on ours), so the bound is the lifetime it
    # claims (exp - iat, skew-free) counted from when we asked.
    span = claimed_lifetime(claims)
    if span is not None and asked_at + span < expires_on:
        expires_on = int(asked_at + span)
    lifetime = expires_on - now
    if lifetime <= 0:
        raise ValueError(f"{origin} returned an already expired token")
    if lifetime < policy.MIN_LIFETIME:
        raise ValueError(
            f"{origin} returned a token that lives {lifetime:.1f}s (at least {policy.MIN_LIFETIME:g}s: it "
            "would expire before use, and renewing it would flood the identity endpoint)"
        )
    if lifetime > MAX_LIFETIME:
        raise ValueError(f"{origin} returned a token that lives {lifetime / 3600:.0f} h (at most 25 h)")
    if refresh_on is not None and not (_finite(refresh_on) and 0 < refresh_on < expires_on):
        refresh_on = None
    info = AccessTokenInfo(value, int(expires_on), token_type=info.token_type, refresh_on=refresh_on)
    token = Token(info, min(asked_at, now), source, margin)
    token._claims = claims
    return token


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Token:
    """A token plus the times derived from it: ``usable_until`` (handed out until), ``refresh_due`` (renew
    from), its ``claims`` (decoded once, unverified: they describe the token, they don't authorize), and
    ``source`` ("imds", "file", ...). Its repr shows the length, never the value."""

    __slots__ = (
        "_claims",
        "access",
        "acquired_at",
        "expires_on",
        "info",
        "refresh_due",
        "source",
        "usable_until",
    )

    def __init__(self, info: AccessTokenInfo, acquired_at: float, source: str, refresh_margin: float) -> None:
        self.info = SafeAccessTokenInfo(
            info.token, int(info.expires_on), token_type=info.token_type, refresh_on=info.refresh_on
        )
        self.access = SafeAccessToken(info.token, int(info.expires_on))
        self.acquired_at = acquired_at
        self.expires_on = float(info.expires_on)
        self.source = source
        self.usable_until = policy.usable_until(self.expires_on, acquired_at)
        self.refresh_due = policy.refresh_due(self.expires_on, acquired_at, refresh_margin, info.refresh_on)
        self._claims: dict[str, Any] | None = None

    @property
    def value(self) -> str:
        return self.info.token

    @property
    def lifetime(self) -> float:
        return self.expires_on - self.acquired_at

    @property
    def claims(self) -> dict[str, Any]:
        """The JWT's claims (``{}`` for a token that is not a JWT)."""
        claims = self._claims
        if claims is None:
            try:
                claims = jwt.decode(self.value, options={"verify_signature": False})
            except jwt.PyJWTError:
                claims = {}
            self._claims = claims
        return claims

    @property
    def issued_at(self) -> float:
        """When the token was issued, on this host's clock: ``expires_on`` less the lifetime its claims state
        (``exp`` - ``iat``, both on the issuer's clock, so a skew between the clocks cancels), else when we
        received it."""
        span = claimed_lifetime(self.claims)
        return self.expires_on - span if span is not None else self.acquired_at

    def __repr__(self) -> str:
        return (
            f"<token {len(self.value)} chars, expires in {self.expires_on - time.time():.0f}s, "
            f"source={self.source}>"
        )

    __str__ = __repr__
