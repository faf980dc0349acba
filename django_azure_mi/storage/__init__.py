"""Blob Storage with a managed identity (``STORAGES`` backend): ``backend`` (the django-storages subclass),
``files`` (the Storage contract as FileSystemStorage keeps it) and ``delegation`` (user delegation keys on
the shared renewal loop)."""

from .backend import AzureManagedIdentityStorage
from .delegation import KEY_BACKDATE, KEY_LIFETIME, DelegationKey, DelegationKeys
from .files import BlobFiles, BlobNotFoundError

__all__ = [
    "KEY_BACKDATE",
    "KEY_LIFETIME",
    "AzureManagedIdentityStorage",
    "BlobFiles",
    "BlobNotFoundError",
    "DelegationKey",
    "DelegationKeys",
]
