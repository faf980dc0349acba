"""Settings: ``settings.AZURE_MANAGED_IDENTITY`` (every key optional) plus environment defaults.

Validated into a frozen :class:`Config`; the :mod:`~django_azure_mi.runtime` holds the current one and is
replaced when the setting changes. Works without Django settings configured too (defaults + environment),
so the token core can be used from plain scripts.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

from .core.credentials import KINDS as CREDENTIAL_KINDS
from .core.credentials import IdentityKey
from .diagnostics import SettingError

SETTING: Final = "AZURE_MANAGED_IDENTITY"


@dataclass(frozen=True)
class Cloud:
    """One Azure cloud: its name and its Entra ID authority. Each service's default scope in it is the
    service's own (``services.get(name).scope(cloud.name)``)."""

    name: str
    authority_host: str
    az_name: str  # azure-cli's name for it (az cloud set --name)


CLOUDS: Final[dict[str, Cloud]] = {
    "public": Cloud("public", "login.microsoftonline.com", "AzureCloud"),
    "usgovernment": Cloud("usgovernment", "login.microsoftonline.us", "AzureUSGovernment"),
    "china": Cloud("china", "login.chinacloudapi.cn", "AzureChinaCloud"),
}

DEFAULTS: Final[dict[str, Any]] = {
    "CREDENTIAL": "managed_identity",
    "CLIENT_ID": None,
    "CLOUD": "public",
    "REFRESH_MARGIN": 300,
    "TOKEN_CACHE_DIR": None,
    "TIMEOUT": 15,
    "IDLE_LIFETIMES": 2,
    "WARM_UP": False,
}

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")


@dataclass(frozen=True)
class Config:
    """The validated ``AZURE_MANAGED_IDENTITY`` setting."""

    credential: str
    client_id: str | None
    cloud: Cloud
    refresh_margin: float
    token_cache_dir: str | None
    timeout: float
    idle_lifetimes: float = 2.0
    warm_up: bool | str = False

    # Every token lookup by scope hashes the Config (the runtime's provider map is keyed by it): hash once.
    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash(
            (
                self.credential,
                self.client_id,
                self.cloud,
                self.refresh_margin,
                self.token_cache_dir,
                self.timeout,
                self.idle_lifetimes,
                self.warm_up,
            )
        )

    @cached_property
    def identity_key(self) -> IdentityKey:
        """The configured identity (``CREDENTIAL``, ``CLIENT_ID``, the cloud's authority): one object, so a
        provider lookup compares it by identity."""
        return IdentityKey(self.credential, self.client_id, self.cloud.authority_host)


def _error(key: str, problem: str, fix: str) -> SettingError:
    return SettingError("E001", f"{SETTING}[{key!r}] {problem}.", fix)


def validate_client_id(value: Any, where: str) -> str | None:
    """A client id is a GUID (the identity's *client id*, not its object id or resource id)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not GUID.match(value.strip()):
        raise SettingError(
            "E002",
            f"{where} must be the client id (a GUID like 00000000-0000-0000-0000-000000000000) of a "
            f"user-assigned managed identity, got {value!r}.",
            "Find it with `az identity show -n NAME -g GROUP --query clientId`, or leave it unset for the "
            "system-assigned identity.",
        )
    return value.strip()


def read_setting(settings: Any) -> Any:
    """The raw ``AZURE_MANAGED_IDENTITY`` of configured Django settings: None when unset (defaults apply); an
    explicit ``None`` is refused, since it looks like "off" and is not."""
    raw = getattr(settings, SETTING, _UNSET)
    if raw is None:
        raise SettingError(
            "E001",
            f"{SETTING} is None.",
            "Remove it (every key has a default) or set a dict such as {'CLIENT_ID': '<client id>'}.",
        )
    return None if raw is _UNSET else raw


_UNSET: Final = object()


def build_config(raw: Any, environ: os._Environ[str] | dict[str, str] | None = None) -> Config:
    """Validate a raw ``AZURE_MANAGED_IDENTITY`` value; raise ImproperlyConfigured naming key and fix."""
    env = os.environ if environ is None else environ
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SettingError(
            "E001",
            f"{SETTING} must be a dict, got {type(raw).__name__}.",
            f'Example: {SETTING} = {{"CREDENTIAL": "managed_identity"}}',
        )
    unknown = sorted(set(raw) - set(DEFAULTS), key=str)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), DEFAULTS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise _error(key, "is not a known key", f"Allowed keys: {', '.join(DEFAULTS)}.{hint}")
    values = {**DEFAULTS, **raw}

    credential = values["CREDENTIAL"]
    if not isinstance(credential, str) or not (credential in CREDENTIAL_KINDS or _DOTTED.match(credential)):
        raise _error(
            "CREDENTIAL",
            f"is {credential!r}",
            f"Use one of {', '.join(map(repr, CREDENTIAL_KINDS))} or a dotted path to a zero-argument "
            "callable returning an azure.core TokenCredential.",
        )

    client_id = values["CLIENT_ID"]
    if client_id is None:
        client_id = env.get("AZURE_CLIENT_ID") or None
        where = "The AZURE_CLIENT_ID environment variable"
    else:
        where = f"{SETTING}['CLIENT_ID']"
    client_id = validate_client_id(client_id, where)

    cloud = values["CLOUD"]
    if cloud not in CLOUDS:
        raise _error("CLOUD", f"is {cloud!r}", f"Use one of {', '.join(map(repr, CLOUDS))}.")

    margin = values["REFRESH_MARGIN"]
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 43200:
        raise _error(
            "REFRESH_MARGIN",
            f"is {margin!r}",
            "Use a number of seconds between 0 and 43200 (default 300): how long before expiry the "
            "token is refreshed in the background.",
        )

    cache_dir = values["TOKEN_CACHE_DIR"]
    if cache_dir is not None:
        if not isinstance(cache_dir, (str, os.PathLike)) or not os.fspath(cache_dir):
            raise _error(
                "TOKEN_CACHE_DIR",
                f"is {cache_dir!r}",
                "Use None (no sharing) or the path of a directory only this user can read, "
                'e.g. "/tmp/django-azure-mi".',
            )
        cache_dir = os.path.abspath(os.fspath(cache_dir))

    timeout = values["TIMEOUT"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
        raise _error(
            "TIMEOUT",
            f"is {timeout!r}",
            "Use a number of seconds between 0 and 600 (default 15): the longest a caller waits for a "
            "token when none is cached, and the read timeout of each identity-endpoint request.",
        )

    idle = values["IDLE_LIFETIMES"]
    if isinstance(idle, bool) or not isinstance(idle, (int, float)) or not 0 <= idle <= 1000:
        raise _error(
            "IDLE_LIFETIMES",
            f"is {idle!r}",
            "Use a number of token lifetimes >= 0 (default 2): a token nobody asked for that long stops "
            "being refreshed until the next call; 0 refreshes every token for the life of the process.",
        )

    warm = values["WARM_UP"]
    if warm not in (False, True, "tokens"):
        raise _error(
            "WARM_UP",
            f"is {warm!r}",
            'Use False (default), "tokens" (fetch each configured service\'s token when the app is ready; '
            "right for a gunicorn --preload master) or True (the tokens, then the first connections).",
        )

    return Config(
        credential=credential,
        client_id=client_id,
        cloud=CLOUDS[cloud],
        refresh_margin=float(margin),
        token_cache_dir=cache_dir,
        timeout=float(timeout),
        idle_lifetimes=float(idle),
        warm_up=warm,
    )
