"""The core's errors, and the redaction every message that may carry upstream text goes through."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import re
from dataclasses import dataclass

from azure.core.exceptions import ClientAuthenticationError

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_SAS_SIGNATURE = re.compile(r"(?i)\b(sig=)[^&\s'\"]+")
# The libraries under us whose log lines may carry a token or a signed URL (an IMDS error body, the URL
# urllib3 logs at DEBUG); our own loggers only ever log lengths and expiries.
REDACTED_LOGGERS: tuple[str, ...] = ("azure", "urllib3", "msal")


def redact(text: str) -> str:
    """Replace anything shaped like a JWT in ``text`` (error messages from upstream) with ``<redacted
    token>``, and the signature of a signed URL (``sig=...``) with ``sig=<redacted>``."""
    return _SAS_SIGNATURE.sub(r"\1<redacted>", _JWT.sub("<redacted token>", text))


class RedactingFilter(logging.Filter):
    """A logging filter that redacts tokens and SAS signatures from a record (in place): its message, and
    the traceback of ``exc_info`` (then kept as redacted text only: the exception's own message may carry
    what an upstream error body said)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the handler's problem, not ours
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            clean = redact(text)
            if clean != text:
                record.exc_info, record.exc_text = None, clean
        return True


_FILTER = RedactingFilter()


def install_log_redaction(prefixes: tuple[str, ...] = REDACTED_LOGGERS) -> int:
    """Add the redacting filter to every existing logger named ``prefix`` or ``prefix.*`` (idempotent;
    returns how many loggers have it). A logger's filters apply to the records it creates, not to those
    propagated from its children, so each logger gets it; call again after importing more of a library."""
    count = 0
    manager = logging.Logger.manager
    for name in sorted({*prefixes, *list(manager.loggerDict)}):
        if name == "" or not any(name == p or name.startswith(p + ".") for p in prefixes):
            continue
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        count += 1
    return count


def describe_error(exc: BaseException, limit: int = 500) -> str:
    """``ClassName: message`` with tokens redacted and length capped - safe for logs and exceptions."""
    message = redact(" ".join(str(exc).split()))
    if len(message) > limit:
        message = message[: limit - 1] + "…"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


_PLAIN = (str, bytes, int, float, bool, type(None), enum.Enum)


def _plain(value: object, depth: int = 0) -> bool:
    """Data that cannot lead anywhere: scalars, and tuples/lists/dicts/frozen dataclasses of them (a
    diagnosis an adapter attached, a :class:`Problem`)."""
    if isinstance(value, _PLAIN):
        return True
    if depth >= 2:
        return False
    if isinstance(value, (tuple, list, frozenset, set)):
        return all(_plain(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    params = getattr(type(value), "__dataclass_params__", None)
    if params is not None and params.frozen:
        return all(_plain(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value))  # type: ignore[arg-type]
    return False


def scrubbed(exc: BaseException) -> BaseException:
    """``exc`` cut loose from everything that held the token while it was raised: THE rule for every
    exception that escapes a call that put a token on the wire (docs/security.md, "Exceptions").

    A client library's frames hold what it sent (psycopg's ``conninfo`` with the password, redis-py's
    ``AUTH`` arguments, the requests frame with ``headers["Authorization"]``), and its exceptions keep
    objects that do (psycopg's ``pgconn``, azure-core's ``exc_traceback``/``inner_exception``/``response``
    with the request). A reporter capturing locals walks an exception's traceback and its
    ``__context__``/``__cause__``, suppressed or not. So, whatever the class: the traceback and the chain
    are cut; an attribute holding an exception is scrubbed the same way; one holding anything but plain
    data (scalars and containers of them) is set to None; the message is redacted. Type, message and plain
    attributes (``status_code``, ``error_code``, ``errno``, ...) stay. Raise the result outside the
    ``except`` block that caught it, or Python chains the handled exception back on as ``__context__``."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        current.__cause__ = current.__context__ = None
        for name, value in list(getattr(current, "__dict__", {}).items()):
            if isinstance(value, BaseException):
                pending.append(value)
            elif not _plain(value):
                with contextlib.suppress(AttributeError, TypeError):  # read-only: leave it
                    setattr(current, name, None)
        try:
            message = str(current)
        except Exception:  # a broken __str__: keep only the class
            current.args = ()
            continue
        clean = redact(message)
        if clean != message:
            current.args = (clean,)
            for name in ("message", "exc_msg"):  # azure-core keeps the message twice more
                if isinstance(getattr(current, name, None), str):
                    setattr(current, name, redact(getattr(current, name)))
    return exc


@dataclass(frozen=True)
class Problem:
    """A misconfiguration: the check id ``manage.py check`` reports it under (``"E001"`` for
    ``django_azure_mi.E001``), what is wrong (naming the setting) and how to fix it."""

    check_id: str
    problem: str
    fix: str = ""

    @property
    def message(self) -> str:
        return f"{self.problem} {self.fix}".strip()


class ConfigurationError(ValueError):
    """Raised by the core for a misconfiguration; the Django layer re-raises it as a ``SettingError``."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class TokenUnavailableError(ClientAuthenticationError):
    """No valid token for ``scope`` could be had. Carries no token, only what went wrong."""

    def __init__(self, message: str, *, scope: str, identity: str, last_error: str | None = None) -> None:
        super().__init__(message=message)
        self.scope = scope
        self.identity = identity
        self.last_error = last_error


class TokenCacheError(ConfigurationError):
    """TOKEN_CACHE_DIR is unusable (wrong owner or permissions)."""


class ScopeRefusedError(ClientAuthenticationError):
    """A service's credential was asked for a token of another audience: refused, nothing fetched."""

    def __init__(self, message: str, *, scope: str, binding: str) -> None:
        super().__init__(message=message)
        self.scope = scope
        self.binding = binding
