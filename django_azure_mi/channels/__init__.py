"""Django Channels' Redis layers on Entra-only Redis: channels_redis's layers whose connections sign in
with the managed identity and re-AUTH before expiry (``cache/aio.py``).

    CHANNEL_LAYERS = {"default": {
        "BACKEND": "django_azure_mi.channels.RedisChannelLayer",
        "CONFIG": {"hosts": ["rediss://mycache.redis.cache.windows.net:6380/0"],
                   "MANAGED_IDENTITY": {"USERNAME": "<object id of the identity>"}},  # optional
    }}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..services import lazy_exports

if TYPE_CHECKING:
    from .layers import RedisChannelLayer, RedisPubSubChannelLayer

_LAZY = {"RedisChannelLayer": "layers", "RedisPubSubChannelLayer": "layers"}

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = ["RedisChannelLayer", "RedisPubSubChannelLayer"]
