"""django-azure-mi: Managed Identity (Microsoft Entra ID) tokens for Django's Postgres, Redis and Blob.

The small public API lives here; everything else is reached through settings (see docs/getting-started.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.2.0.dev0"
__all__ = ["TokenUnavailableError", "__version__", "get_token_provider"]

if TYPE_CHECKING:
    from . import runtime
    from .core.errors import TokenUnavailableError
    from .core.provider import TokenProvider


def get_token_provider(scope: str, client_id: str | None = None) -> TokenProvider:
    """The process-wide :class:`~django_azure_mi.core.provider.TokenProvider` for ``scope``.

    ``client_id`` picks a user-assigned identity; ``None`` means the configured one
    (``AZURE_MANAGED_IDENTITY["CLIENT_ID"]``, else env ``AZURE_CLIENT_ID``, else system-assigned).
    The provider is an azure-core ``TokenCredential``: ``provider.get_token(scope)``.
    """
    try:  # the import system binds ``runtime`` here once the submodule is imported (no import per call)
        module = runtime
    except NameError:
        from . import runtime as module
    return module.get().provider(scope, client_id)


def __getattr__(name: str) -> object:
    if name == "TokenUnavailableError":
        from .core.errors import TokenUnavailableError

        return TokenUnavailableError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
