"""Who the Postgres stand-in lets in: tokens checked against the attached identity endpoint (its signing key,
its identities, its clock), roles that use a password instead, and what the gateway accepted and refused.
Part of :class:`~django_azure_mi.testing.postgres.PostgresStandIn`."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .gateway import attach_to
from .pggateway import Gateway, Verdict, check_token

if TYPE_CHECKING:
    from .imds import IMDSEmulator


class SignIns:
    """Token and password sign-in (a mixin of PostgresStandIn; ``_lock`` is the stand-in's; the principals
    of :class:`~django_azure_mi.testing.pgaadauth.EntraPrincipals`)."""

    resource: str
    direct: bool
    _lock: threading.Lock
    _roles: dict[str, str | None]
    _passwords: dict[str, str]
    _attached: list[IMDSEmulator]
    _gateway: Gateway | None
    _server_port: int

    if TYPE_CHECKING:  # EntraPrincipals' (the stand-in's other mixin)

        def sync_directory(self, imds: IMDSEmulator | None = None) -> None: ...

        def bound_object_id(self, role: str) -> str | None: ...

    def attach(self, imds: IMDSEmulator) -> Callable[[], None]:
        """Check tokens against ``imds`` (its signing key and identities) until the returned function is
        called. Attachments stack: the latest one decides, and detaching it brings back the one before (a
        test's emulator over the session's)."""
        detach = attach_to(self._lock, self._attached, imds)
        self.sync_directory(imds)  # the tenant's names, for pgaadauth_create_principal
        return detach

    def set_password(self, role: str, password: str | None) -> None:
        """Make ``role`` sign in with ``password`` instead of a token (Azure's built-in PostgreSQL
        authentication); None: back to tokens."""
        with self._lock:
            if password is None:
                self._passwords.pop(role, None)
            else:
                self._passwords[role] = password

    def reset_passwords(self) -> None:
        """Back to token sign-in for every role (between tests)."""
        with self._lock:
            self._passwords.clear()

    @property
    def sign_ins(self) -> int:
        """How many sign-ins the gateway accepted."""
        return self._gateway.sign_ins if self._gateway else 0

    @property
    def direct_port(self) -> int:
        """The real server's own TCP port (``direct=True`` only)."""
        assert self.direct, "start the stand-in with direct=True"
        return self._server_port

    def accepted_fingerprints(self) -> list[str]:
        """What signed in, oldest first, as :func:`~.gateway.fingerprint` s (never the tokens)."""
        return list(self._gateway.accepted) if self._gateway else []

    @property
    def refusals(self) -> list[str]:
        """The FATAL messages of refused sign-ins, oldest first."""
        return list(self._gateway.refusals) if self._gateway else []

    def _check(self, user: str, password: str) -> Verdict:
        with self._lock:
            static = self._passwords.get(user)
            known = user in self._roles
            client_id = self._roles.get(user)
            imds = self._attached[-1] if self._attached else None
        refused = f'password authentication failed for user "{user}"'
        if static is not None:
            return Verdict(None if hmac.compare_digest(static.encode(), password.encode()) else refused)
        bound = None if known else self.bound_object_id(user)  # a role made by pgaadauth_create_principal…
        if not known and bound is None:
            return Verdict(refused)
        if imds is None:
            return Verdict(f"{refused} (no identity endpoint attached to the stand-in)")
        try:
            oid: str | None = bound or imds.object_id(client_id)
        except KeyError:
            oid = None
        return check_token(
            password, key=imds.public_key(), resource=self.resource, oid=oid, user=user, now=imds.now()
        )
