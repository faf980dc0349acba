"""The runtime: the ONE owner of process-wide state.

Everything that lives for the process - the validated settings, one credential per identity, one
:class:`~django_azure_mi.core.provider.TokenProvider` per (identity, scope), and the adapters' shared parts
("components": the Redis re-AUTH of an identity, the delegation keys of a storage account, Key Vault values,
readiness results...) - hangs off the current :class:`Runtime`. Nothing else in the package keeps
module-level mutable state.

Lifecycle:

* built on first use (:func:`get`);
* replaced as a whole when ``AZURE_MANAGED_IDENTITY`` changes (``setting_changed``): the old one is closed,
  so its worker threads stop and nothing of it is used again;
* :func:`reset` closes it (tests: ``django_azure_mi.testing.reset_state``);
* after ``os.fork()`` the child's runtime gets new locks, forgets the parent's credentials (HTTP connections)
  and tells every provider and component (the one ``os.register_at_fork`` of the package).

A component is any object with ``close()``; ``after_fork()`` is called too when it has one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar, overload

from azure.core.credentials import TokenCredential

from . import conf
from .core.clock import SYSTEM, Clock
from .core.credentials import IdentityKey, build_credential
from .core.provider import TokenProvider
from .diagnostics import setting_errors

logger = logging.getLogger("django_azure_mi")

C = TypeVar("C", bound="Component")
T = TypeVar("T")


class Component(Protocol):
    def close(self) -> None: ...


class Runtime:
    """Process-wide objects for one ``AZURE_MANAGED_IDENTITY`` setting. ``clock``: where every provider and
    component of this runtime reads the time (tests: a fake one, :func:`reset`)."""

    def __init__(self, clock: Clock = SYSTEM) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self._config: conf.Config | None = None
        self._provisional = False  # config read before Django's settings were configured
        self._credentials: dict[tuple[IdentityKey, float], TokenCredential] = {}
        # THE provider map: one provider per (identity, settings, scope); adapters hold theirs (per_runtime)
        self._providers: dict[tuple[IdentityKey, conf.Config, str], TokenProvider] = {}
        self._keys: dict[tuple[str, conf.Config], IdentityKey] = {}
        self._components: dict[Hashable, Any] = {}
        self.closed = False

    # ------------------------------------------------------------------ settings

    @property
    def config(self) -> conf.Config:
        """The validated ``AZURE_MANAGED_IDENTITY``. Before Django's settings are configured (plain scripts,
        or settings.py itself running): defaults + environment, re-read once settings exist."""
        config = self._config
        if config is None or self._provisional:
            from django.conf import settings

            with self._lock:
                if self._config is None or (self._provisional and settings.configured):
                    configured = settings.configured
                    raw = conf.read_setting(settings) if configured else None
                    self._config = conf.build_config(raw)
                    self._provisional = not configured
                    if configured:
                        _say_if_not_installed()
                config = self._config
        return config

    # ------------------------------------------------------------------ identity

    def identity_key(self, client_id: str | None = None, config: conf.Config | None = None) -> IdentityKey:
        config = config or self.config
        if client_id is None or client_id == config.client_id:
            return config.identity_key
        # one object per identity, so the provider map's lookups compare keys by identity, not field by field
        key = self._keys.get((client_id, config))
        if key is None:
            key = self._keys.setdefault(
                (client_id, config), IdentityKey(config.credential, client_id, config.cloud.authority_host)
            )
        return key

    def credential(self, key: IdentityKey, timeout: float) -> TokenCredential:
        """The credential of ``key`` (built on first use; a misconfiguration raises SettingError)."""
        credential = self._credentials.get((key, timeout))
        if credential is None:
            with self._lock:
                credential = self._credentials.get((key, timeout))
                if credential is None:
                    with setting_errors():
                        credential = build_credential(key, timeout)
                    self._credentials[(key, timeout)] = credential
        return credential

    def provider(
        self, scope: str, client_id: str | None = None, config: conf.Config | None = None
    ) -> TokenProvider:
        """The provider for ``scope`` of the identity ``client_id`` (None: the configured one). Adapters hold
        theirs (:class:`per_runtime`) instead of asking on every use."""
        chosen = config or self.config
        if client_id is None:  # the common case, kept to the fewest calls
            return self._provider(chosen.identity_key, chosen, scope)
        resolved = conf.validate_client_id(client_id, "get_token_provider(client_id=...)")
        return self._provider(self.identity_key(resolved, chosen), chosen, scope)

    def _provider(self, key: IdentityKey, config: conf.Config, scope: str) -> TokenProvider:
        provider = self._providers.get((key, config, scope))
        if provider is None or provider.closed:
            with self._lock:
                if self.closed:
                    raise RuntimeError("django-azure-mi: this runtime was closed (settings changed or reset)")
                provider = self._providers.get((key, config, scope))
                if provider is None or provider.closed:
                    self.credential(key, config.timeout)  # misconfiguration fails here, in the caller
                    with setting_errors():
                        provider = TokenProvider(
                            None,
                            scope,
                            identity=key.label,
                            source=key.source,
                            refresh_margin=config.refresh_margin,
                            timeout=config.timeout,
                            cache_dir=config.token_cache_dir,
                            idle_lifetimes=config.idle_lifetimes,
                            credential_factory=lambda: self.credential(key, config.timeout),
                            siblings=lambda other: self._provider(key, config, other),
                            clock=self.clock,
                        )
                    self._providers[(key, config, scope)] = provider
        return provider

    def providers(self) -> list[TokenProvider]:
        """The live providers (diagnostics and tests)."""
        with self._lock:
            return [p for p in self._providers.values() if not p.closed]

    # ------------------------------------------------------------------ components

    def component(self, key: Hashable, factory: Callable[[], C]) -> C:
        """The component stored under ``key``, made by ``factory()`` on first use."""
        found = self._components.get(key)
        if found is None:
            with self._lock:
                found = self._components.get(key)
                if found is None:
                    if self.closed:
                        raise RuntimeError(
                            "django-azure-mi: this runtime was closed (settings changed or reset)"
                        )
                    found = self._components[key] = factory()
        return found

    def components(self) -> list[Any]:
        with self._lock:
            return list(self._components.values())

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close components first (their threads use providers), then providers, then credentials."""
        with self._lock:
            self.closed = True
            components = list(self._components.values())
            providers = list(self._providers.values())
            credentials = list(self._credentials.values())
            self._components.clear()
            self._providers.clear()
            self._credentials.clear()
        for component in components:
            try:
                component.close()
            except Exception:
                logger.exception("closing %r failed", component)
        for provider in providers:
            provider.close()
        for credential in credentials:
            close = getattr(credential, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):  # best effort
                    close()

    def after_fork_in_child(self) -> None:
        """New locks; the parent's credentials (and their HTTP connections) are forgotten, not closed."""
        self._lock = threading.RLock()
        self._credentials.clear()
        for provider in self._providers.values():
            provider.after_fork()
        for component in self._components.values():
            after_fork = getattr(component, "after_fork", None)
            if after_fork is not None:
                after_fork()


class per_runtime(Generic[T]):  # lower case: used like @property
    """A property resolved from the current runtime once, and again only when the runtime changes (a settings
    change, a reset) or when ``stale(value)`` says so: what adapters hold instead of looking a provider or
    component up on every use.

        class Pool:
            @per_runtime
            def entra(self, rt: Runtime) -> EntraAuth:
                return rt.component(("redis-auth", self.settings), lambda: EntraAuth(self.settings, rt.clock))
    """

    def __init__(
        self, resolve: Callable[[Any, Runtime], T], stale: Callable[[T], bool] | None = None
    ) -> None:
        self._resolve, self._stale = resolve, stale
        self._slot = f"_per_runtime_{resolve.__name__}"
        self.__doc__ = resolve.__doc__

    @overload
    def __get__(self, obj: None, owner: type) -> per_runtime[T]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> T: ...
    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return self
        current = get()
        held = obj.__dict__.get(self._slot)  # (runtime, value); frozen dataclasses too
        if held is None or held[0] is not current or (self._stale is not None and self._stale(held[1])):
            held = obj.__dict__[self._slot] = (current, self._resolve(obj, current))
        return held[1]


def per_runtime_unless(stale: Callable[[T], bool]) -> Callable[[Callable[[Any, Runtime], T]], per_runtime[T]]:
    """:class:`per_runtime`, also re-resolved when ``stale(value)`` (a provider closed by its user)."""
    return lambda resolve: per_runtime(resolve, stale)


_lock = threading.Lock()
_current: Runtime | None = None


def _say_if_not_installed() -> None:
    """Our backends work without the app, but its system checks (a PASSWORD refused, the TLS rule) and
    ``azure_check`` don't run: said once per runtime, the first time one of them reads the settings."""
    from django.apps import apps

    if apps.ready and not apps.is_installed("django_azure_mi"):
        logger.warning(
            "django_azure_mi is not in INSTALLED_APPS: its system checks (manage.py check: PASSWORD refused, "
            "TLS, option typos) and manage.py azure_check are off, and mistakes show only at the first "
            "connection. Add 'django_azure_mi' to INSTALLED_APPS."
        )


def get() -> Runtime:
    """The current runtime (built on first use)."""
    global _current
    runtime = _current
    if runtime is None:
        with _lock:
            if _current is None:
                _current = Runtime()
            runtime = _current
    return runtime


def reset(clock: Clock | None = None) -> None:
    """Close the current runtime; the next :func:`get` builds a new one (with ``clock``, when given: tests
    run the adapters' schedules on a fake clock, ``django_azure_mi.testing.clock.on_fake_clock``)."""
    global _current
    with _lock:
        runtime, _current = _current, (None if clock is None else Runtime(clock))
    if runtime is not None:
        runtime.close()


def on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """``setting_changed`` receiver (connected in ``apps.py``): a new ``AZURE_MANAGED_IDENTITY`` gets a new
    runtime."""
    if setting == conf.SETTING:
        reset()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    if _current is not None:
        _current.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
