"""The Storage contract on Blob Storage, kept as FileSystemStorage keeps it where django-storages'
``AzureStorage`` does not (upstream #1270, #1431, #1542, #1543):

* ``listdir(path)`` returns ``(dirs, files)``: base names one level below ``path``, from the service's
  delimiter listing (every page), with ``location`` applied and stripped, with or without trailing slashes;
* ``exists()`` is true of a "directory" (a name prefix that some blob has), as of a folder on disk;
* a missing blob raises :class:`BlobNotFoundError`, a ``FileNotFoundError`` (which Django's
  ``ManifestStaticFilesStorage`` relies on), from ``open()``, ``size()`` and the ``get_*_time()`` methods;
  ``open()`` for reading fetches the blob at once, as a file opens at once;
* ``get_created_time()`` is implemented, and both times follow ``USE_TZ`` as FileSystemStorage's do.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobPrefix
from django.utils import timezone as dj_timezone
from storages.backends.azure_storage import AzureStorage, AzureStorageFile
from storages.utils import clean_name, setting

from .. import diagnostics
from ..core.errors import scrubbed
from .delegation import explained
from .diagnosis import diagnose

T = TypeVar("T")


class BlobNotFoundError(FileNotFoundError, ResourceNotFoundError):
    """A blob that is not there. A ``FileNotFoundError``, as FileSystemStorage raises (Django's
    ``ManifestStaticFilesStorage`` and others catch that), and still the SDK's ``ResourceNotFoundError``
    for code written against django-storages."""

    def __init__(self, name: str, cause: ResourceNotFoundError | None = None, container: str = "") -> None:
        reason = "No such blob"
        if getattr(cause, "error_code", None) == "ContainerNotFound":
            reason += f" (the container {container!r} does not exist: create it, or fix azure_container)"
        ResourceNotFoundError.__init__(self, f"{reason}: {name!r}", response=getattr(cause, "response", None))
        self.errno, self.strerror, self.filename = errno.ENOENT, reason, name
        self.status_code = 404


def explain_errors(action: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """The boundary of every storage method that talks to the service: a missing blob becomes
    :class:`BlobNotFoundError`, 401/403 say what to do about it, and whatever escapes (any class) is
    :func:`~django_azure_mi.core.errors.scrubbed`: the SDK's errors keep the requests frames that held
    ``headers["Authorization"]`` (``exc_traceback``, ``inner_exception``, the traceback)."""

    def decorate(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def wrapper(self: Any, name: str = "", *args: Any, **kwargs: Any) -> T:
            try:
                return method(self, name, *args, **kwargs)
            except BaseException as exc:
                error = _translated(exc, self, name, action)  # explained (the diagnosis stays on)
            raise scrubbed(error)  # outside the except: nothing chained back on

        return wrapper

    return decorate


def _translated(exc: BaseException, storage: Any, name: str, action: str) -> BaseException:
    if isinstance(exc, AzureError) and not isinstance(exc, HttpResponseError):  # unreachable, hung up, ...
        return diagnostics.attach(exc, diagnose(exc, storage.alias))
    if isinstance(exc, BlobNotFoundError) or not isinstance(exc, HttpResponseError):
        return exc
    if isinstance(exc, ResourceNotFoundError):
        return BlobNotFoundError(name, exc, getattr(storage, "azure_container", ""))
    return explained(exc, f"{action} {name!r}", storage.alias)


class BlobFiles(AzureStorage):  # type: ignore[misc]
    """django-storages' AzureStorage with FileSystemStorage's contract (see the module docstring); errors
    name the ``STORAGES`` alias (``self.alias``) and, for 401/403, the missing role."""

    alias: str

    @explain_errors("upload")
    def _save(self, name: str, content: Any) -> str:
        return str(super()._save(name, content))

    @explain_errors("open")
    def _open(self, name: str, mode: str = "rb") -> Any:
        file = AzureStorageFile(name, mode, self)
        if "r" in mode:  # fetched now, as FileSystemStorage opens now: a missing blob fails here
            file.file  # noqa: B018
        return file

    @explain_errors("check")
    def exists(self, name: str) -> bool:
        """Whether a blob, or a "directory" (a name prefix that some blob has), is there, as
        FileSystemStorage answers for a folder: ``collectstatic --clear`` walks folders by it. A missing
        name costs a second, one-result listing."""
        if super().exists(name):
            return True
        prefix = f"{self._get_valid_path(name)}/"
        listing = self.client.list_blobs(name_starts_with=prefix, results_per_page=1, timeout=self.timeout)
        return next(iter(listing), None) is not None

    @explain_errors("delete")
    def delete(self, name: str) -> None:
        super().delete(name)

    @explain_errors("read the size of")
    def size(self, name: str) -> int:
        return int(super().size(name))

    @explain_errors("list")
    def listdir(self, path: str = "") -> tuple[list[str], list[str]]:
        """``(dirs, files)``: the base names one level below ``path`` (under ``location``), as
        FileSystemStorage returns them, from the service's delimiter listing (all pages). A "directory"
        is a name prefix that some blob has: one that holds no blob is not there (and lists as empty)."""
        prefix = self._normalize_name(clean_name(path)).strip("/")  # location applied, traversal refused
        prefix = f"{prefix}/" if prefix else ""
        dirs: list[str] = []
        files: list[str] = []
        listing = self.client.walk_blobs(name_starts_with=prefix or None, delimiter="/", timeout=self.timeout)
        for item in listing:
            base = item.name[len(prefix) :]
            if isinstance(item, BlobPrefix):
                dirs.append(base.rstrip("/"))
            elif base:  # not a folder marker ("dir/" itself, as some tools create)
                files.append(base)
        return dirs, files

    @explain_errors("read the modification time of")
    def get_modified_time(self, name: str) -> datetime:
        return self._time(name, "last_modified")

    @explain_errors("read the creation time of")
    def get_created_time(self, name: str) -> datetime:
        return self._time(name, "creation_time")

    def _time(self, name: str, attribute: str) -> datetime:
        """A blob's time as FileSystemStorage gives its times: aware in UTC with ``USE_TZ``, else naive in
        the current time zone."""
        properties = self.client.get_blob_client(self._get_valid_path(name)).get_blob_properties(
            timeout=self.timeout
        )
        value: datetime = getattr(properties, attribute)
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        if setting("USE_TZ", False):
            return value.astimezone(timezone.utc)
        return dj_timezone.make_naive(value)
