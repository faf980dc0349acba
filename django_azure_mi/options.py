"""Per-service options, validated once, and the one TLS rule.

Every adapter's identity options (``DATABASES[…]['OPTIONS']['managed_identity']``,
``CACHES[…]['OPTIONS']['MANAGED_IDENTITY']``, ``STORAGES[…]['OPTIONS']['managed_identity']``) go through
:func:`bind`, which checks the dict against the service's :class:`OptionSpec` and returns a frozen
:class:`ServiceBinding`: which identity, which scope, and (on demand) its token provider.

One casing rule: an option dict's keys take the casing of the dict they sit in - upper case inside
django-redis's upper-case ``OPTIONS``, lower case in ``DATABASES``/``STORAGES`` ``OPTIONS`` (Django's and
django-storages' own convention). A key in the wrong casing is reported with the right spelling.

One TLS rule (:func:`require_tls`): a bearer token goes only over TLS, unless the target is loopback.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions

from . import conf, runtime, services
from .core.errors import ScopeRefusedError
from .diagnostics import SettingError

if TYPE_CHECKING:
    from .core.provider import TokenProvider

Validator = Callable[[Any], Any]  # returns the value to use, or raises ValueError("must be ...")


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be True or False.")
    return value


def text(what: str) -> Validator:
    """A string option (empty = unset); ``what`` says what it must be, for the error."""

    def validate(value: Any) -> str | None:
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise ValueError(f"must be {what}.")
        return value

    return validate


@dataclass(frozen=True)
class OptionSpec:
    """The identity option dict of one service: its name, the check id of a malformed dict, its casing,
    and the keys beyond ``client_id``/``scope`` (with their validators and defaults)."""

    service: str  # a registered service's name (django_azure_mi.services): picks the cloud's default scope
    name: str  # the option's key, e.g. "managed_identity"
    check_id: str
    example: str
    upper: bool = False
    extra: dict[str, tuple[Validator, Any]] = field(default_factory=dict)  # name: (validator, default)

    def key(self, name: str) -> str:
        return name.upper() if self.upper else name

    @property
    def keys(self) -> tuple[str, ...]:
        return (*(self.key(k) for k in self.extra), self.key("client_id"), self.key("scope"))


def _closed(provider: TokenProvider) -> bool:  # closed by its user (``with get_token_provider(…)``)
    return provider.closed


@dataclass(frozen=True)
class ServiceBinding:
    """One service's validated identity: resolved once, used for every connection. ``where`` names the
    option dict in messages; ``values`` holds the spec's extra keys (lower-case names)."""

    service: str
    where: str = field(compare=False)  # the first alias's, when two aliases share an identity
    client_id: str | None
    scope: str
    values: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @runtime.per_runtime_unless(_closed)
    def provider(self, rt: runtime.Runtime) -> TokenProvider:
        """The current runtime's provider (a settings change gives a new one)."""
        return rt.provider(self.scope, self.client_id)

    @runtime.per_runtime
    def credential(self, rt: runtime.Runtime) -> BindingCredential:
        """A TokenCredential for SDK clients that asks the current provider on every call (one per binding
        in a runtime, so that every storage of an identity shares it)."""
        return rt.component(("credential", self), lambda: BindingCredential(self))


class BindingCredential:
    """An azure-core ``TokenCredential`` for an SDK client that outlives a settings change, and serves
    **only its binding's scope**: an SDK that asks for another one (a ``WWW-Authenticate`` challenge naming
    another resource, from anyone who can answer for the endpoint) is refused with
    :class:`~django_azure_mi.core.errors.ScopeRefusedError` and nothing is fetched."""

    def __init__(self, binding: ServiceBinding, provider: Callable[[], TokenProvider] | None = None) -> None:
        self.binding = binding
        self._provider = provider or (lambda: binding.provider)  # Key Vault: a config of its own

    @property
    def identity(self) -> str:
        return self._provider().identity

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self._own(scopes)
        return self._provider().get_token(*scopes, **kwargs)

    def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        self._own(scopes)
        return self._provider().get_token_info(*scopes, options=options)

    def _own(self, scopes: tuple[str, ...]) -> None:
        if scopes != (self.binding.scope,):
            asked = ", ".join(map(repr, scopes)) or "no scope"
            raise ScopeRefusedError(
                f"{self.binding.where} serves tokens for {self.binding.scope!r} only; the client asked for "
                f"{asked} (a server answering for this endpoint challenged for another resource?). No "
                "token was fetched. If the endpoint really is that service, set its scope here.",
                scope=", ".join(scopes),
                binding=self.binding.where,
            )

    def close(self) -> None:
        """Nothing to close: the provider belongs to the runtime (a runtime component needs close())."""

    def __repr__(self) -> str:
        return f"<BindingCredential {self.binding.service} scope={self.binding.scope!r}>"


class Bound:
    """For an adapter's settings object that holds a ``binding``: its identity, scope and provider."""

    binding: ServiceBinding

    @property
    def client_id(self) -> str | None:
        return self.binding.client_id

    @property
    def scope(self) -> str:
        return self.binding.scope

    @property
    def provider(self) -> TokenProvider:
        return self.binding.provider


def refuse_near_miss(options: Any, name: str, where: str, check_id: str) -> None:
    """A key of ``options`` (``where``: the dict) spelled almost as our option ``name``
    (``managed_identiy``) is refused, naming the spelling: else it goes to the driver as one of its own
    options (psycopg: "invalid connection option") or is ignored, and the identity is never used."""
    for key in options if isinstance(options, dict) else ():
        if not isinstance(key, str) or key == name:
            continue
        if difflib.get_close_matches(key.lower(), [name.lower()], n=1, cutoff=0.8):
            raise SettingError(
                check_id,
                f"{where}[{key!r}] is neither an option of ours nor of the driver: did you mean {name!r}?",
                f"Rename it to {name!r}.",
            )


def bind(spec: OptionSpec, raw: Any, where: str) -> ServiceBinding:
    """Validate ``raw`` (the option dict, None for defaults) against ``spec``; ``where`` names the dict
    that holds it, e.g. ``"DATABASES['default']['OPTIONS']"``. Raises SettingError naming key and fix."""
    where = f"{where}['{spec.name}']"
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise SettingError(spec.check_id, f"{where} must be a dict", f"such as {spec.example}.")
    allowed = spec.keys
    for key in raw:
        if key not in allowed:
            right = [k for k in allowed if isinstance(key, str) and k.lower() == key.lower()]
            close = difflib.get_close_matches(str(key).lower(), [k.lower() for k in allowed], n=1)
            near = [k for k in allowed if close and k.lower() == close[0]]
            hint = (
                f" (in this dict it is spelled {right[0]!r})"
                if right
                else f" (did you mean {near[0]!r}?)"
                if near
                else ""
            )
            raise SettingError(
                spec.check_id,
                f"{where} has unknown key {key!r}{hint};",
                f"allowed: {', '.join(map(repr, allowed[:-1]))} and/or {allowed[-1]!r}.",
            )
    client_key, scope_key = spec.key("client_id"), spec.key("scope")
    client_id = conf.validate_client_id(raw.get(client_key), f"{where}['{client_key}']")
    default = services.get(spec.service).scope(runtime.get().config.cloud.name)
    scope = raw.get(scope_key) or default
    if not isinstance(scope, str) or not scope.startswith("https://"):
        raise SettingError(
            "E005",
            f"{where}['{scope_key}'] = {scope!r} is not a scope;",
            f"the default for AZURE_MANAGED_IDENTITY['CLOUD'] is {default!r}.",
        )
    values: dict[str, Any] = {}
    for name, (validate, fallback) in spec.extra.items():
        key = spec.key(name)
        try:
            values[name] = validate(raw[key]) if key in raw else fallback
        except ValueError as exc:
            raise SettingError(
                spec.check_id, f"{where}['{key}'] {exc}", f"Remove it for the default ({fallback!r})."
            ) from None
    return ServiceBinding(spec.service, where, client_id, scope, values)


def alias_of(setting: str, options: Any) -> str:
    """``"CACHES['sessions']"``: the entry of ``settings.<setting>`` whose ``OPTIONS`` is ``options`` (the
    same dict, as Django's cache handler passes it, else an equal one, as its storage handler does), for
    messages that name the alias; ``"CACHES[…]"`` when it cannot be told (a backend built by hand)."""
    from django.conf import settings

    entries = getattr(settings, setting, None) if settings.configured else None
    if isinstance(entries, dict):
        for same in (lambda o: o is options, lambda o: o == options):
            for alias, entry in entries.items():
                if isinstance(entry, dict) and same(entry.get("OPTIONS")):
                    return f"{setting}[{alias!r}]"
    return f"{setting}[…]"


def split_locations(location: Any) -> list[str]:
    """The server URLs of a cache LOCATION, split as Django's RedisCache splits them."""
    urls = re.split(r"[;,]", location) if isinstance(location, str) else list(location or [])
    return [str(url).strip() for url in urls if str(url).strip()]


# ---------------------------------------------------------------------------------------------- TLS


# The values each TLS option's library documents as verifying the server; any other value (False, None, 0,
# "", "none", "optional", a typo) counts as "off" and needs the service's explicit opt-out (verify_tls=False).
# redis-py/kombu/Celery: ssl_cert_reqs and ssl_check_hostname; requests/azure-core: connection_verify.
VERIFYING: Final[dict[str, Callable[[Any], bool]]] = {
    "ssl_cert_reqs": lambda v: (
        (isinstance(v, str) and v.lower() in ("required", "cert_required"))
        or (isinstance(v, ssl.VerifyMode) and v is ssl.CERT_REQUIRED)
    ),
    "ssl_check_hostname": lambda v: v is True,
    "connection_verify": lambda v: v is True or (isinstance(v, str) and bool(v.strip())),  # True or a CA path
}


def verifies(option: str, value: Any) -> bool:
    """THE rule for TLS option values: does ``value`` of ``option`` verify the server?"""
    return VERIFYING[option](value)


def is_loopback(host: str | None) -> bool:
    """True for hosts that never leave this machine: loopback names/addresses and Unix socket paths.
    Bearer tokens may travel without TLS only to these."""
    if not host:
        return True  # libpq/redis default: the local socket
    host = host.strip().strip("[]")
    if host.startswith("/") or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_remote(targets: str | Sequence[str | None] | None) -> bool:
    """Does any of the effective ``targets`` leave this machine? ``None``: unknown (a service file, ...),
    which counts as remote."""
    if targets is None:
        return True
    if isinstance(targets, str):
        targets = [targets]
    return not all(is_loopback(target) for target in targets) or not targets


def require_tls(
    check_id: str, targets: str | Sequence[str | None] | None, tls: bool, problem: str, fix: str = ""
) -> None:
    """THE rule: a token goes without (verified) TLS only when every effective target is loopback.
    ``targets``: a host, the hosts a client will try, or None when they cannot be known here. ``problem``
    and ``fix`` word the error for the setting at hand."""
    if not tls and is_remote(targets):
        raise SettingError(check_id, problem, fix)
