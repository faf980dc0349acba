"""The token core: no Django import anywhere below this package.

``token`` (Token), ``policy`` (when to refresh/retry), ``refresher`` (the one renewal loop), ``provider``
(TokenProvider), ``credentials`` (azure-identity), ``filecache`` (TOKEN_CACHE_DIR), ``errors``.
"""

from .errors import ConfigurationError, Problem, TokenUnavailableError, describe_error, redact
from .provider import AsyncTokenProvider, TokenProvider
from .refresher import Defer, NotReady, Refresher
from .token import Token

__all__ = [
    "AsyncTokenProvider",
    "ConfigurationError",
    "Defer",
    "NotReady",
    "Problem",
    "Refresher",
    "Token",
    "TokenProvider",
    "TokenUnavailableError",
    "describe_error",
    "redact",
]
