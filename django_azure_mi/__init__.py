"""django-azure-mi: Managed Identity (Microsoft Entra ID) tokens for Django's Postgres, Redis and Blob.

The small public API lives here; everything else is reached through settings (see README).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["TokenUnavailableError", "__version__", "get_token_provider"]

if TYPE_CHECKING:
    from .conf import Config
    from .tokens import TokenProvider, TokenUnavailableError

_SOURCES = {"managed_identity": "imds", "workload_identity": "entra", "default": "default-credential"}


def get_token_provider(scope: str, client_id: str | None = None) -> TokenProvider:
    """The process-wide :class:`~django_azure_mi.tokens.TokenProvider` for ``scope``.

    ``client_id`` picks a user-assigned identity; ``None`` means the configured one
    (``AZURE_MANAGED_IDENTITY["CLIENT_ID"]``, else env ``AZURE_CLIENT_ID``, else system-assigned).
    The provider is an azure-core ``TokenCredential``: ``provider.get_token(scope)``.
    """
    global _memo_config
    from . import conf

    config = conf.get_config()
    if config is not _memo_config:  # settings changed (or first call): forget the shortcuts
        _memo.clear()
        _memo_config = config
    provider = _memo.get((scope, client_id))
    if provider is None or provider.closed:
        provider = _memo[(scope, client_id)] = _build_provider(config, scope, client_id)
    return provider


_memo: dict[tuple[str, str | None], TokenProvider] = {}
_memo_config: object = None


def _build_provider(config: Config, scope: str, client_id: str | None) -> TokenProvider:
    import functools

    from . import conf, identity, tokens

    client_id = conf.validate_client_id(client_id, "get_token_provider(client_id=...)")
    key = identity.identity_key(config, client_id)
    identity.get_credential(key, config.timeout)  # misconfiguration fails here, in the caller's thread
    return tokens.get_provider(
        (key, config),
        scope,
        functools.partial(identity.get_credential, key, config.timeout),
        identity=key.label,
        source=_SOURCES.get(key.credential, "credential"),
        refresh_margin=config.refresh_margin,
        timeout=config.timeout,
        cache_dir=config.token_cache_dir,
    )


def __getattr__(name: str) -> object:
    if name == "TokenUnavailableError":
        from .tokens import TokenUnavailableError

        return TokenUnavailableError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
