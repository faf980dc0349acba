"""Blob Storage with a managed identity (``STORAGES`` backend): ``backend`` (the django-storages subclass),
``files`` (the Storage contract as FileSystemStorage keeps it) and ``delegation`` (user delegation keys on
the shared renewal loop)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..services import lazy_exports

if TYPE_CHECKING:
    from .backend import AzureManagedIdentityStorage
    from .delegation import KEY_BACKDATE, KEY_LIFETIME, DelegationKey, DelegationKeys
    from .files import BlobFiles, BlobNotFoundError

# Loaded on first use, so that service.py imports without the storage SDK.
_LAZY = {
    "AzureManagedIdentityStorage": "backend",
    "KEY_BACKDATE": "delegation",
    "KEY_LIFETIME": "delegation",
    "DelegationKey": "delegation",
    "DelegationKeys": "delegation",
    "BlobFiles": "files",
    "BlobNotFoundError": "files",
}


__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "KEY_BACKDATE",
    "KEY_LIFETIME",
    "AzureManagedIdentityStorage",
    "BlobFiles",
    "BlobNotFoundError",
    "DelegationKey",
    "DelegationKeys",
]
