"""The identity endpoint emulator's identities: the system-assigned one and one per client id, each with its
own object id (part of :class:`~django_azure_mi.testing.imds.IMDSEmulator`)."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .imds import IMDSEmulator


@dataclass(frozen=True)
class Identity:
    """A managed identity known to the emulator."""

    object_id: str
    client_id: str | None  # None: the system-assigned identity
    name: str

    @property
    def resource_id(self) -> str:
        sub = "00000000-0000-0000-0000-000000000000"
        if self.client_id is None:
            return f"/subscriptions/{sub}/resourcegroups/local/providers/Microsoft.Web/sites/{self.name}"
        return (
            f"/subscriptions/{sub}/resourcegroups/local/providers/Microsoft.ManagedIdentity/"
            f"userAssignedIdentities/{self.name}"
        )


class Identities:
    """The identities an emulator speaks for (a mixin of IMDSEmulator; ``_lock`` is the emulator's)."""

    _lock: threading.Lock
    _identities: dict[str | None, Identity]
    _strict: bool
    tenant_id: str
    system_assigned: bool

    def add_identity(self, client_id: str, object_id: str | None = None, name: str | None = None) -> Identity:
        """Assign a user-assigned identity to the host (Azure: ``az … identity assign --user-assigned``);
        other client ids get 400 "Identity not found", unless the emulator is ``lenient``."""
        with self._lock:
            identity = Identity(object_id or str(uuid.uuid4()), client_id, name or f"app-{client_id[:8]}")
            self._identities[client_id] = identity
            return identity

    def adopt(self, other: IMDSEmulator) -> None:
        """Take over ``other``'s tenant and identities (object ids): this endpoint then speaks for the same
        VM, as if its identity endpoint had restarted, so its tokens carry the same ``oid`` and ``tid``.
        The pytest plugin does this when a session-wide emulator is running (``azure_session_imds``)."""
        with other._lock:
            identities = dict(other._identities)
        with self._lock:
            self.tenant_id = other.tenant_id
            self._identities.update(identities)

    def identity(self, client_id: str | None = None) -> Identity:
        """The identity for ``client_id`` (None: system-assigned), created on first use."""
        with self._lock:
            found = self._identities.get(client_id)
        return found or self.add_identity(client_id)  # type: ignore[arg-type]

    def identities(self) -> list[Identity]:
        """Every identity it speaks for (the system-assigned one once asked for)."""
        with self._lock:
            return list(self._identities.values())

    def object_id(self, client_id: str | None = None) -> str:
        return self.identity(client_id).object_id

    def _find_identity(self, params: dict[str, str]) -> Identity | None:
        client_id = params.get("client_id")
        object_id = params.get("object_id") or params.get("principal_id")
        res_id = params.get("msi_res_id") or params.get("mi_res_id")
        with self._lock:
            if client_id:
                found = self._identities.get(client_id)
                if found is None and not self._strict:
                    found = Identity(str(uuid.uuid4()), client_id, f"app-{client_id[:8]}")
                    self._identities[client_id] = found
                return found
            if object_id or res_id:
                for candidate in self._identities.values():
                    if object_id == candidate.object_id or res_id == candidate.resource_id:
                        return candidate
                return None
            return self._identities[None] if self.system_assigned else None
