"""Blob Storage with a managed identity (``STORAGES`` backend): ``backend`` (the django-storages subclass),
``files`` (the Storage contract as FileSystemStorage keeps it) and ``delegation`` (user delegation keys on
the shared renewal loop)."""

from ..diagnostics import STORAGE_ROLES as ROLES
from .backend import AzureManagedIdentityStorage
from .delegation import KEY_BACKDATE, KEY_LIFETIME, DelegationKey, DelegationKeys
from .files import BlobFiles, BlobNotFoundError

__all__ = [
    "KEY_BACKDATE",
    "KEY_LIFETIME",
    "ROLES",
    "AzureManagedIdentityStorage",
    "BlobFiles",
    "BlobNotFoundError",
    "DelegationKey",
    "DelegationKeys",
]
