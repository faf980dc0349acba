"""The identity endpoint emulator's tokens: RS256 JWTs shaped like Entra's, signed with what the stand-ins
take for Entra's key (a fixed test key shipped beside this module, the same for every emulator), stamped on
its clock (``clock``, plus ``clock_skew``: Azure's clock minus this host's), counted and announced to
subscribers (the Postgres and Redis stand-ins accept exactly these tokens). Part of
:class:`~django_azure_mi.testing.imds.IMDSEmulator`."""

from __future__ import annotations

import collections
import contextlib
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt

from ..core.clock import Clock

if TYPE_CHECKING:
    from .identities import Identity

SIGNING_KEY_FILE = "entra-test-signing-key.pem"


@dataclass(frozen=True)
class IssuedToken:
    """A token the emulator handed out. Its repr hides the token."""

    token: str = field(repr=False)
    resource: str
    identity: Identity
    tenant_id: str
    issued_at: int
    expires_on: int

    def __repr__(self) -> str:
        return (
            f"IssuedToken(resource={self.resource!r}, oid={self.identity.object_id}, "
            f"expires_on={self.expires_on}, token=<{len(self.token)} chars>)"
        )


class Minting:
    """Token making and counting (a mixin of IMDSEmulator; ``_lock`` is the emulator's)."""

    _lock: threading.Lock
    _key_lock: threading.Lock
    _key: Any
    _callbacks: list[Callable[[IssuedToken], None]]
    requests: collections.Counter[str]
    issued: list[IssuedToken]
    tenant_id: str
    ttl: float
    clock: Clock
    clock_skew: float

    def identity(self, client_id: str | None = None) -> Identity:
        raise NotImplementedError

    def _private_key(self) -> Any:
        """Entra's signing key, as far as the stand-ins know: one fixed test key shipped with the package
        (``entra-test-signing-key.pem``), so that every emulator signs as the one Entra does - a token of
        another VM's endpoint verifies, and is refused for its identity, not its signature. It signs only
        emulator tokens; nothing in the product verifies signatures with it."""
        with self._key_lock:
            if self._key is None:
                from cryptography.hazmat.primitives.serialization import load_pem_private_key

                pem = (Path(__file__).parent / SIGNING_KEY_FILE).read_bytes()
                self._key = load_pem_private_key(pem, None, unsafe_skip_rsa_key_validation=True)
            return self._key

    def public_key(self) -> Any:
        """The key this emulator's tokens verify against (what a resource checks them with)."""
        return self._private_key().public_key()

    def mint(
        self, resource: str, client_id: str | None = None, *, ttl: float | None = None, **claims: Any
    ) -> IssuedToken:
        """Make a token directly (no HTTP, not counted, no callbacks): for crafting bad tokens in tests.
        ``claims`` override the defaults (e.g. ``aud=...``, ``exp=...``)."""
        return self._make_token(resource, self.identity(client_id), ttl, claims)

    def now(self) -> float:
        """Azure's clock: this host's plus ``clock_skew``."""
        return self.clock.time() + self.clock_skew

    def _make_token(
        self, resource: str, identity: Identity, ttl: float | None, extra: dict[str, Any]
    ) -> IssuedToken:
        now = int(self.now())
        exp = now + int(self.ttl if ttl is None else ttl)
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": exp,
            "aio": "local-emulator",
            "appid": identity.client_id or "system-" + identity.object_id[:8],
            "appidacr": "2",
            "idp": f"https://sts.windows.net/{self.tenant_id}/",
            "idtyp": "app",
            "oid": identity.object_id,
            "sub": identity.object_id,
            "tid": self.tenant_id,
            "uti": uuid.uuid4().hex,
            "ver": "1.0",
            "xms_mirid": identity.resource_id,
        }
        claims.update(extra)
        token = jwt.encode(claims, self._private_key(), algorithm="RS256", headers={"kid": "local-emulator"})
        return IssuedToken(token, resource, identity, self.tenant_id, now, int(claims["exp"]))

    def on_token(self, callback: Callable[[IssuedToken], None]) -> Callable[[], None]:
        """Call ``callback(issued)`` for every token issued over HTTP, before the response is sent.
        Returns a function that unsubscribes."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def request_count(self, resource: str | None = None) -> int:
        """Token requests received (answered or faulted) for ``resource`` (None: all)."""
        with self._lock:
            return self.requests[resource] if resource else sum(self.requests.values())

    def issued_count(self, resource: str | None = None) -> int:
        with self._lock:
            return sum(1 for t in self.issued if resource is None or t.resource == resource)

    def last_token(self, resource: str | None = None) -> IssuedToken | None:
        with self._lock:
            for issued in reversed(self.issued):
                if resource is None or issued.resource == resource:
                    return issued
        return None

    def reset_counters(self) -> None:
        with self._lock:
            self.requests.clear()
            self.issued.clear()
