"""What went wrong and how to fix it, written once: the system checks, the errors adapters raise,
``azure_check`` and the readiness view all read these objects instead of parsing message text.

* :class:`~django_azure_mi.core.errors.Problem` - a misconfiguration (check id, problem, fix). A
  :class:`SettingError` carries one; ``manage.py check`` shows ``problem`` as the message and ``fix`` as
  the hint.
* :class:`ServiceFailure` - a service or the identity endpoint refused or failed at run time: ``kind``,
  ``diagnosis``, ``fix`` and the ``facts`` it was judged from. Each service has one ``diagnose_*``
  function; an adapter raising an error attaches the failure it built (:func:`attach`), and a probe reads
  it back (:func:`failure_of`) or diagnoses an error that came straight from a driver or SDK.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .core.errors import ConfigurationError, Problem

__all__ = ["Problem", "ServiceFailure", "SettingError", "attach", "failure_of", "setting_errors"]


class SettingError(ImproperlyConfigured):
    """A misconfiguration, with the id ``manage.py check`` reports it under (``django_azure_mi.E0xx``).
    ``SettingError("E020", "what is wrong, naming the setting.", "How to fix it.")`` or
    ``SettingError(problem)``."""

    def __init__(self, check_id: str | Problem, problem: str = "", fix: str = "") -> None:
        self.problem = check_id if isinstance(check_id, Problem) else Problem(check_id, problem, fix)
        super().__init__(self.problem.message)

    @property
    def check_id(self) -> str:
        return self.problem.check_id


@contextlib.contextmanager
def setting_errors() -> Iterator[None]:
    """Re-raise the core's ConfigurationError as a SettingError (an ImproperlyConfigured)."""
    try:
        yield
    except ConfigurationError as exc:
        raise SettingError(exc.problem) from None


@dataclass(frozen=True)
class ServiceFailure:
    """A diagnosed run-time failure: ``kind`` (a short stable id such as ``"no-role"``), ``diagnosis``
    (what is wrong), ``fix`` (what to do), ``facts`` (what it was judged from; never a secret)."""

    kind: str
    diagnosis: str
    fix: str
    facts: dict[str, Any] = field(default_factory=dict)
    # what happened, in the words the adapter's exception says it before the diagnosis and fix (see explain)
    context: str = ""


def explain(context: str, failure: ServiceFailure) -> tuple[str, ServiceFailure]:
    """An adapter's exception message for a diagnosed failure: ``context`` (what happened, what the server
    said), then the diagnosis and the fix, so that a log or a traceback says it all; and the failure with
    ``context`` kept apart, so that ``azure_check`` prints each part once."""
    message = f"{context} {failure.diagnosis} {failure.fix}"
    return message, dataclasses.replace(failure, context=context)


def attach(exc: BaseException, failure: ServiceFailure) -> BaseException:
    """Attach ``failure`` to ``exc`` (the exception an adapter is about to raise) and return it."""
    exc.azure_failure = failure  # type: ignore[attr-defined]
    return exc


def failure_of(exc: BaseException) -> ServiceFailure | None:
    """The failure an adapter attached to ``exc`` (or to the exception it wraps: Django re-raises driver
    errors as its own, with the original as ``__cause__``); a SettingError's Problem as a failure."""
    cause: BaseException | None = exc
    for _ in range(5):
        if cause is None:
            break
        found = getattr(cause, "azure_failure", None)
        if isinstance(found, ServiceFailure):
            return found
        cause = cause.__cause__
    problem = getattr(exc, "problem", None)
    if isinstance(problem, Problem):
        return ServiceFailure(
            "misconfiguration",
            f"Misconfiguration (django_azure_mi.{problem.check_id}): {problem.problem}",
            problem.fix or "See `manage.py check`.",
        )
    return None


# ---------------------------------------------------------------------------------------------- run time
# Each function judges an exception raised by a driver, an SDK or the token core (their text and codes,
# never a message of ours) and says what is wrong and what to do.

_UNREACHABLE = ("refused", "resolve", "unreachable", "name or service not known", "timed out")


def text_of(exc: BaseException) -> str:
    """The exception's message on one line, redacted."""
    from .core.errors import redact

    return redact(" ".join(str(exc).split()))


def diagnose_identity(exc: BaseException) -> ServiceFailure | None:
    """The token core could not get a token (``TokenUnavailableError``); None for other errors."""
    from .core.errors import TokenUnavailableError

    if not isinstance(exc, TokenUnavailableError):
        return None
    upstream = (exc.last_error or "").lower()  # azure-identity's words
    facts = {"scope": exc.scope, "identity": exc.identity, "last_error": exc.last_error}
    if "identity not found" in upstream or " 400" in upstream:
        return ServiceFailure(
            "unknown-identity",
            'The identity endpoint does not know this identity (400 "Identity not found"): no '
            "user-assigned identity with this client id is assigned to this host.",
            "Assign the user-assigned identity to this app (az webapp identity assign / az containerapp "
            "identity assign --user-assigned <id>) and set AZURE_MANAGED_IDENTITY['CLIENT_ID'] to its "
            "client id.",
            facts,
        )
    return ServiceFailure(
        "no-identity-endpoint",
        "No token: the managed identity endpoint (IMDS) is unreachable or refused - this process is "
        "probably not running on Azure, or the app has no managed identity.",
        "On Azure: enable the identity (az webapp identity assign). Locally: set "
        "AZURE_MANAGED_IDENTITY = {'CREDENTIAL': 'default'} and run `az login`.",
        facts,
    )


def timeout_failure(title: str, where: str, seconds: float) -> ServiceFailure:
    """``title`` (a service's, e.g. "Postgres") did not answer within ``seconds``."""
    return ServiceFailure(
        "timeout",
        f"{title} did not answer in time.",
        f"Check the host/port in {where}, the network path (VNet, private endpoint, firewall rules).",
        {"timeout_s": seconds},
    )


def generic(title: str, where: str, exc: BaseException) -> ServiceFailure:
    """What any service's error text shows (TLS, unreachable), for the service called ``title``."""
    text = text_of(exc).lower()
    if "ssl" in text or "certificate" in text:
        return ServiceFailure(
            "tls",
            "TLS handshake failed.",
            "Check the server certificate and the CA bundle the client trusts.",
        )
    if any(word in text for word in _UNREACHABLE):
        return ServiceFailure(
            "unreachable",
            f"{title} is unreachable.",
            f"Check the host and port in {where} and the network path.",
        )
    return ServiceFailure(
        "error",
        f"The {title} probe failed with an error this package does not recognise.",
        f"Act on what the error says; if it names no cause, check the settings in {where} and the network "
        f"path to {title}, and run `manage.py azure_check --json` for the details.",
    )


def diagnose(service: str, exc: BaseException, where: str) -> ServiceFailure:
    """What a probe of ``service`` (a registered name; ``where`` names its setting in fixes) shows: the
    failure an adapter attached, else the identity's, else the service's own reading of a driver/SDK
    error, else a generic one."""
    from . import services

    found = failure_of(exc) or diagnose_identity(exc)
    if found is not None:
        return found
    described = services.get(service)
    if described.diagnose is not None:
        return described.diagnose(exc, where)
    return generic(described.title, where, exc)
