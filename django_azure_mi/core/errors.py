"""The core's errors, and the redaction every message that may carry upstream text goes through."""

from __future__ import annotations

import re
from dataclasses import dataclass

from azure.core.exceptions import ClientAuthenticationError

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


def redact(text: str) -> str:
    """Replace anything shaped like a JWT in ``text`` (error messages from upstream) with ``<redacted>``."""
    return _JWT.sub("<redacted token>", text)


def describe_error(exc: BaseException, limit: int = 500) -> str:
    """``ClassName: message`` with tokens redacted and length capped - safe for logs and exceptions."""
    message = redact(" ".join(str(exc).split()))
    if len(message) > limit:
        message = message[: limit - 1] + "…"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


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
