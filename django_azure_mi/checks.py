"""System checks (``manage.py check``, run by ``runserver``/``migrate`` too): static misconfiguration only,
no network. ``manage.py azure_check`` talks to the services.

The checks run the adapters' own validation, so a check and the error raised at runtime always agree; each
:class:`~django_azure_mi.diagnostics.SettingError` carries its id. The ids, with what each means, are in
:mod:`django_azure_mi.checkids` (docs/checks.md's table is generated from it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from . import conf, services
from .core.credentials import KINDS, IdentityKey, check_workload_environment, import_factory
from .core.errors import Problem
from .core.filecache import cache_dir_state, check_cache_dir
from .diagnostics import setting_errors
from .services import scope_owner


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every static check (registered by ``apps.py`` under the ``django_azure_mi`` tag)."""
    from django.conf import settings

    errors: list[checks.CheckMessage] = []
    config = run_check(
        errors, "AZURE_MANAGED_IDENTITY", lambda: conf.build_config(conf.read_setting(settings))
    )
    if config is None:
        return errors  # every adapter check would repeat the same error
    run_check(errors, "AZURE_MANAGED_IDENTITY['CREDENTIAL']", _check_credential, config)
    if config.token_cache_dir:
        obj = "AZURE_MANAGED_IDENTITY['TOKEN_CACHE_DIR']"
        before = len(errors)
        run_check(errors, obj, check_cache_dir, config.token_cache_dir)
        why = cache_dir_state(config.token_cache_dir) if len(errors) == before else None
        if why is not None:
            errors.append(
                checks.Warning(
                    f"{obj} = {config.token_cache_dir!r} cannot be written: {why}. Each process keeps its "
                    "tokens in memory only (one identity request per process, not per host).",
                    hint="Point it at a writable directory (a tmpfs or emptyDir volume on a read-only "
                    "container), or remove the setting.",
                    obj=obj,
                    id="django_azure_mi.W007",
                )
            )
    for service in services.registered():
        service.check(errors)
    return errors


def run_check(errors: list[checks.CheckMessage], obj: str, check: Callable[..., Any], *args: Any) -> Any:
    """Call ``check``; turn a SettingError (or a missing extra) into a check message."""
    try:
        with setting_errors():
            return check(*args)
    except ImportError as exc:
        errors.append(
            checks.Error(
                f"{obj} needs a package that is not installed ({exc}).",
                hint="pip install 'django-azure-mi[all]' (or the extra for this service: "
                + ", ".join(service.extra for service in services.registered())
                + ").",
                obj=obj,
                id="django_azure_mi.E006",
            )
        )
    except ImproperlyConfigured as exc:
        problem = getattr(exc, "problem", None)
        if not isinstance(problem, Problem):  # Django's own, e.g. pooling without psycopg 3
            problem = Problem("E000", str(exc))
        errors.append(
            checks.Error(
                problem.problem, hint=problem.fix or None, obj=obj, id=f"django_azure_mi.{problem.check_id}"
            )
        )
    return None


def _check_credential(config: conf.Config) -> None:
    """The environment a built-in credential needs, or that a custom factory imports. Nothing is built
    and a custom factory is not called: it may do anything."""
    key = IdentityKey(config.credential, config.client_id, config.cloud.authority_host)
    if key.credential in KINDS:
        check_workload_environment(key)
    else:
        import_factory(key.credential)


def warn_foreign_scope(
    errors: list[checks.CheckMessage], obj: str, identity_options: Any, key: str, service: str
) -> None:
    """A scope that is another service's default (a Storage scope on a database, ...): its tokens will be
    refused. A warning, not an error: a custom audience may be meant (and the refusal is diagnosed)."""
    scope = identity_options.get(key) if isinstance(identity_options, dict) else None
    owner = scope_owner(scope)
    if owner is not None and owner != service:
        errors.append(
            checks.Warning(
                f"{obj}: the {key} {scope!r} is the scope of {owner}, not of {service}.",
                hint=f"The service will refuse its tokens. Remove {key} (the cloud's default scope applies).",
                obj=obj,
                id="django_azure_mi.W005",
            )
        )


def warn_unverified(
    errors: list[checks.CheckMessage], obj: str, identity_options: Any, key: str, check_id: str
) -> None:
    """The TLS opt-out (``verify_tls`` / ``VERIFY_TLS`` = False) of one service, as a warning."""
    if not isinstance(identity_options, dict) or identity_options.get(key) is not False:
        return
    errors.append(
        checks.Warning(
            f"{obj} sends the access token without verifying the server ({key}=False).",
            hint="Anyone who can impersonate the server (DNS, a proxy, a hostile network) gets a token valid "
            f"for everything this identity may reach. Remove {key}=False and the option that turns "
            "verification off (sslmode require/verify-ca, ssl_cert_reqs/ssl_check_hostname, "
            "connection_verify): Azure's certificates verify against the default trust store.",
            obj=obj,
            id=f"django_azure_mi.{check_id}",
        )
    )
