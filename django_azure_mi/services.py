"""The services django-azure-mi signs in to, each described once, by its own package.

A service's package holds a ``service.py`` whose ``SERVICE`` (a :class:`Service`) says everything the shared
modules need: its default scope per cloud, its system checks, its probe targets and probe, how to read a
failure, the summary line of a healthy probe, the token providers to warm up and the ``azure_check`` options
that select it. ``checks``, ``probes``, ``warmup``, the health views, ``azure_check`` and ``options.bind``
loop over :func:`registered` and name no service (``tests/test_structure.py`` holds them to it). Adding a
service is one new package and one line in :data:`REGISTERED` (docs/architecture.md, "Adding a service").

The descriptors are loaded on first use, and loading one imports no driver or SDK: a service whose extra is
not installed is still checked (E006).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from django.core.checks import CheckMessage

    from .core.provider import TokenProvider
    from .diagnostics import ServiceFailure
    from .probes import Result
    from .provision import Plan

REGISTERED: Final = (
    "django_azure_mi.backends.postgresql.service",
    "django_azure_mi.backends.mysql.service",
    "django_azure_mi.cache.service",
    "django_azure_mi.celery.service",
    "django_azure_mi.storage.service",
    "django_azure_mi.keyvault.service",
    "django_azure_mi.channels.service",
)

Probe = Callable[["Result", bool], None]  # fills a Result (identity, details) or raises; bool: deep


@dataclass(frozen=True)
class Target:
    """One configured thing to probe: ``service`` (a registered name), ``alias`` (the settings alias, or the
    setting's name for a service without aliases), ``where`` (the setting a fix names) and its probe."""

    service: str
    alias: str
    where: str
    probe: Probe


@dataclass(frozen=True)
class Selection:
    """What to probe. ``only`` maps an ``azure_check`` option (``"database"``, ``"keyvault"``, …) to the
    aliases it named (or True for a switch); None selects everything. ``purpose``: ``"check"``
    (azure_check), ``"ready"`` (the readiness view) or ``"warm"`` (warm-up): a service takes part in the
    ones it declares. ``arguments``: the other command-line options (``secret``)."""

    only: Mapping[str, Sequence[str] | bool] | None = None
    purpose: str = "check"
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def wants(self, option: str, alias: str | None = None) -> bool:
        """Is ``alias`` (or, with None, anything) of the service selected by ``option`` wanted?"""
        if self.only is None:
            return True
        chosen = self.only.get(option)
        if chosen is None or chosen is False:
            return False
        return chosen is True or alias is None or alias in chosen


@dataclass(frozen=True)
class CheckId:
    """A check id (``manage.py check`` reports ``django_azure_mi.<id>``) and what it is about."""

    id: str  # "E013": an error; "W011": a warning
    summary: str  # what is wrong (Markdown), for the docs' table


@dataclass(frozen=True)
class Argument:
    """An ``azure_check`` command-line option a service adds (``--database ALIAS``, ``--keyvault``)."""

    name: str  # without the dashes
    help: str
    setting: str | None = None  # aliases of this Django setting (repeatable, ALIAS); None: a switch
    selects: bool = True  # False: an argument for the probe only (Key Vault's --secret)

    @property
    def dest(self) -> str:
        """Its key in the parsed options (argparse's ``dest``: dashes become underscores)."""
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class Service:
    """One service: what the shared modules need to know of it (see the module docstring)."""

    name: str  # THE name everywhere: check-id table, probe results, option specs ("postgres", …)
    title: str  # in messages: "Postgres", "Blob Storage", …
    extra: str  # the pip extra that installs what it needs
    check: Callable[[list[CheckMessage]], None]  # static checks of its settings (no network)
    targets: Callable[[Selection], list[Target]]  # what is configured to use it (no network)
    summary: Callable[[dict[str, Any]], str]  # one line for a healthy probe's details
    check_ids: tuple[CheckId, ...] = ()  # the ids its checks and errors raise (the docs' table)
    scopes: Mapping[str, str] = field(default_factory=dict)  # cloud -> default scope ({}: another's)
    scope_of: str = ""  # the service whose scopes it uses (Celery: the cache's); "" = its own
    diagnose: Callable[[BaseException, str], ServiceFailure] | None = None  # a driver/SDK error at `where`
    provider: Callable[[Target], TokenProvider | None] | None = None  # warm-up; None: not warmed up
    arguments: tuple[Argument, ...] = ()
    purposes: frozenset[str] = frozenset({"check", "ready", "warm"})
    unconfigured: str = ""  # why an explicit selection found nothing, e.g. "AZURE_KEY_VAULT_URL is not set"
    provision: Callable[[Plan], None] | None = None  # adds what Azure must have (azure_setup)
    setup_arguments: tuple[Argument, ...] = ()  # azure_setup's options it reads (Plan.arguments)

    def scope(self, cloud: str) -> str:
        """Its default scope in ``cloud``."""
        return self.scopes[cloud] if self.scopes else get(self.scope_of).scope(cloud)


def aliases(
    setting: str, option: str, selection: Selection, uses: Callable[[dict[str, Any]], bool]
) -> list[str]:
    """The aliases of ``settings.<setting>`` (``"DATABASES"``) whose entry ``uses`` the service and that
    ``selection`` wants under the ``azure_check`` option ``option``: a service's ``targets`` in one line."""
    from django.conf import settings

    entries = getattr(settings, setting, None) or {}
    return [alias for alias, entry in entries.items() if uses(entry) and selection.wants(option, alias)]


def lazy_exports(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A package's module ``__getattr__`` that imports ``names[name]`` (a submodule) on first use, so that
    importing the package (and its ``service.py``) does not import its driver or SDK."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__


def registered() -> list[Service]:
    """Every service, in :data:`REGISTERED` order (imported once, by Python's module cache)."""
    return [importlib.import_module(path).SERVICE for path in REGISTERED]


def get(name: str) -> Service:
    for service in registered():
        if service.name == name:
            return service
    raise LookupError(f"no service {name!r} (registered: {', '.join(s.name for s in registered())})")


def scope_owner(scope: Any) -> str | None:
    """The service whose default scope (in any cloud) ``scope`` is, or None."""
    if not isinstance(scope, str):
        return None
    for service in registered():
        if scope.rstrip("/") in {s.rstrip("/") for s in service.scopes.values()}:
            return service.name
    return None


def targets(selection: Selection) -> list[Target]:
    """What is configured, of the services taking part in ``selection.purpose``."""
    return [
        target
        for service in registered()
        if selection.purpose in service.purposes
        for target in service.targets(selection)
    ]
