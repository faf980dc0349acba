"""azure-identity credentials: which identity (``IdentityKey``) and how to build its credential.

Nothing here caches tokens (the provider does) or credentials (the runtime does): a credential is only the
upstream a :class:`~django_azure_mi.core.provider.TokenProvider` asks when it needs a new token.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

from azure.core.credentials import TokenCredential

from .errors import ConfigurationError, Problem
from .http import BoundedTransport

SETTING: Final = "AZURE_MANAGED_IDENTITY['CREDENTIAL']"
KINDS: Final = ("managed_identity", "workload_identity", "default")
# How a provider labels where its tokens come from (logs, azure_check).
SOURCES: Final = {"managed_identity": "imds", "workload_identity": "entra", "default": "default-credential"}

# Each HTTP try to the identity endpoint: connect within this many seconds (azure-identity's IMDS default).
CONNECTION_TIMEOUT: Final = 2.0
# Retries inside one attempt (azure-core's policy: 404/410/429/5xx, Retry-After): tries at 0, 0, 1, 2 s.
ATTEMPT_RETRY: Final[dict[str, Any]] = {"retry_total": 3, "retry_backoff_factor": 0.5, "retry_backoff_max": 8}
# A Retry-After the identity endpoint sends is honoured up to this many seconds inside an attempt; past it the
# attempt ends and the core's own schedule (backoff, never past the cached token's end) decides the next one.
RETRY_AFTER_CAP: Final = 8.0
_RETRY_AFTER_HEADERS: Final = (
    ("retry-after-ms", 1000.0),
    ("x-ms-retry-after-ms", 1000.0),
    ("Retry-After", 1.0),
)


def cap_retry_after(response: Any) -> None:
    """azure-core ``raw_response_hook``: shorten an identity endpoint's ``Retry-After`` to RETRY_AFTER_CAP.

    azure-core's retry policy sleeps for whatever the server asks (a 429 with ``Retry-After: 100000`` would
    wedge the renewal for a day); the hook runs on each try's response before the retry policy reads it."""
    headers = response.http_response.headers
    for name, unit in _RETRY_AFTER_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / unit
        except ValueError:  # an HTTP date: treat as "long"
            seconds = float("inf")
        if seconds > RETRY_AFTER_CAP:
            headers[name] = f"{RETRY_AFTER_CAP * unit:g}"


@dataclass(frozen=True)
class IdentityKey:
    """Which identity a credential stands for. Also the human-readable label used in logs/errors."""

    credential: str  # "managed_identity" | "workload_identity" | "default" | dotted path
    client_id: str | None
    authority_host: str

    # a key of the runtime's provider map, hashed on every lookup by scope: hash once
    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash((self.credential, self.client_id, self.authority_host))

    @property
    def label(self) -> str:
        who = f"client_id={self.client_id}" if self.client_id else None
        if self.credential == "managed_identity":
            return f"user-assigned managed identity ({who})" if who else "system-assigned managed identity"
        if self.credential == "workload_identity":
            return f"workload identity ({who or 'client_id from AZURE_CLIENT_ID'})"
        if self.credential == "default":
            return f"DefaultAzureCredential ({who})" if who else "DefaultAzureCredential"
        return f"custom credential {self.credential}"

    @property
    def source(self) -> str:
        return SOURCES.get(self.credential, "credential")


def build_credential(key: IdentityKey, timeout: float) -> TokenCredential:
    """A new azure-identity credential for ``key``; every HTTP try is bounded by ``timeout``."""
    # Transport timeouts reach azure-core's RequestsTransport through the credential's kwargs. The token core
    # retries failed attempts on its own schedule for as long as the process lives, so each attempt only
    # retries briefly (azure-identity's IMDS default makes one attempt last ~25 s).
    # Each HTTP request also has one overall deadline (``timeout``) and a body capped while it is read
    # (core/http.py): a per-read timeout does not stop an endpoint that trickles or never stops talking.
    connect = min(CONNECTION_TIMEOUT, timeout)
    transport: dict[str, Any] = {
        "connection_timeout": connect,
        "read_timeout": timeout,
        "raw_response_hook": cap_retry_after,
        "transport": BoundedTransport(deadline=timeout, connection_timeout=connect, read_timeout=timeout),
        **ATTEMPT_RETRY,
    }
    authority = key.authority_host
    if key.credential == "managed_identity":
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=key.client_id, **transport)
    if key.credential == "workload_identity":
        from azure.identity import WorkloadIdentityCredential

        check_workload_environment(key)
        return WorkloadIdentityCredential(client_id=key.client_id, authority=authority, **transport)
    if key.credential == "default":
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential(
            authority=authority,
            managed_identity_client_id=key.client_id,
            workload_identity_client_id=key.client_id,
            **transport,
        )
    return _custom_credential(key.credential)


def check_workload_environment(key: IdentityKey) -> None:
    """The environment AKS workload identity provides (no network; the system checks call it too)."""
    if key.credential != "workload_identity":
        return
    missing = [v for v in ("AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE") if not os.environ.get(v)]
    if not (key.client_id or os.environ.get("AZURE_CLIENT_ID")):
        missing.append("AZURE_CLIENT_ID")
    if missing:
        raise ConfigurationError(
            Problem(
                "E004",
                f'{SETTING} is "workload_identity" but {", ".join(missing)} '
                f"{'is' if len(missing) == 1 else 'are'} not set.",
                "On AKS, label the pod azure.workload.identity/use=true and annotate its service account "
                "with the identity's client id; elsewhere use CREDENTIAL='managed_identity' or 'default'.",
            )
        )


def import_factory(path: str) -> Callable[[], Any]:
    """Import a dotted-path ``CREDENTIAL`` without calling it (also used by the system checks)."""
    module_path, _, name = path.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module_path), name)
    except (ImportError, AttributeError) as exc:
        raise _bad_factory(
            f"{SETTING} = {path!r} cannot be imported ({exc}).",
            'Use "managed_identity", "workload_identity", "default" or the dotted path of a zero-argument '
            "callable.",
        ) from exc
    if not callable(factory):
        raise _bad_factory(
            f"{SETTING} = {path!r} is not callable.",
            "Point it at a zero-argument function or class that returns an azure.core TokenCredential.",
        )
    return factory  # type: ignore[no-any-return]


def _bad_factory(problem: str, fix: str) -> ConfigurationError:
    return ConfigurationError(Problem("E003", problem, fix))


def _custom_credential(path: str) -> TokenCredential:
    credential = import_factory(path)()
    if not callable(getattr(credential, "get_token", None)):
        raise _bad_factory(
            f"{SETTING} = {path!r} returned {type(credential).__name__}, which has no get_token();",
            "it must return an azure.core.credentials.TokenCredential.",
        )
    return credential  # type: ignore[no-any-return]
