"""The Celery broker on Entra-only Redis: kombu's Redis transport with managed-identity AUTH and re-AUTH.

Extension point: kombu's ``Transport``/``Channel`` subclassing (kombu >= 5.5), selected by Celery's
``broker_transport`` setting (an explicit import path, which kombu accepts; it refuses import paths taken
from a URL). Nothing in kombu or redis-py is patched: the channel builds its pools from
:class:`~django_azure_mi.cache.EntraConnectionPool`, so every connection (producers, the consumer's BRPOP
connection, fanout pub/sub) AUTHs with (object id, token) from the package's token core, and re-AUTHs before
expiry like the cache's:

* the consumer's BRPOP connection re-AUTHs between two BRPOPs: kombu blocks for ``brpop_timeout`` (1 s by
  default) at most, then sends the next command, and the connection checks its due time before each;
* idle producer connections are re-AUTHed by the identity's sweeper in the pool;
* a RESP2 pub/sub connection (the worker's remote-control fanout) cannot AUTH while subscribed: Azure
  closes it when its token expires and kombu reconnects it (docs/celery.md says what that costs).

    CELERY_BROKER_URL = "rediss://<name>.redis.cache.windows.net:6380/0"
    CELERY_BROKER_TRANSPORT = "django_azure_mi.celery.transport:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {"managed_identity": {"username": "<object id>"}}  # all keys optional

On Azure Managed Redis (``*.redis.azure.net``, or ``"cluster": "auto"``/``True`` in the transport options)
every key gets the hash-tag prefix ``{celery}:`` unless ``global_keyprefix`` names another one with a hash
tag, so that kombu's multi-key commands (BRPOP over the priority queues, the QoS transactions) stay in one
slot, and the pool connects to the node serving that slot (:mod:`django_azure_mi.cache.slots`): AMR's OSS
policy needs no cluster client, and its Enterprise policy no cross-slot transaction.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import redis
from kombu.transport import redis as kombu_redis

from ..cache.auth import EntraSettings, check_location, parse_options
from ..cache.connection import EntraConnectionMixin
from ..cache.slots import pinned_slot, pool_for
from ..diagnostics import SettingError
from . import SPEC

WHERE: Final = "CELERY_BROKER_TRANSPORT_OPTIONS"
REAUTH_CHECK_INTERVAL: Final = 1.0  # seconds; kombu's default (10 s) is too coarse for short test tokens

logger = logging.getLogger("django_azure_mi.celery")


def broker_settings(transport_options: dict[str, Any] | None) -> EntraSettings:
    """The validated ``managed_identity`` option of the broker's transport options."""
    return parse_options((transport_options or {}).get("managed_identity"), WHERE, SPEC, "CELERY_BROKER_URL")


def _url_params(url: str, where: str) -> dict[str, Any]:
    """Host, port, db and TLS of a broker URL (redis-py's own parser), refusing credentials in it."""
    if "://" not in url:
        raise SettingError(
            "E051",
            f"{where} is {url!r}, not a URL.",
            "Use rediss://<name>.redis.cache.windows.net:6380/0 (Azure Managed Redis: port 10000).",
        )
    check_location(url, where)
    params: dict[str, Any] = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    return params


def _due(connection: Any) -> bool:
    """An open connection of ours that is due to re-AUTH."""
    return (
        isinstance(connection, EntraConnectionMixin)
        and getattr(connection, "_sock", None) is not None
        and connection.entra_due()
    )


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel, whose pools sign in with the identity's tokens."""

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        conninfo = self.connection.client
        if conninfo.userid or conninfo.password:
            raise SettingError(
                "E050",
                "Celery's broker_user or broker_password is set while the broker signs in with a managed "
                "identity.",
                "Remove it: the identity's object id and token are sent instead.",
            )
        url = _url_params(conninfo.hostname or "", "CELERY_BROKER_URL")
        tls = issubclass(url.get("connection_class", redis.Connection), redis.SSLConnection)
        # kombu picks the class (and wraps it for its event loop) from these two attributes
        self.connection_class = self.connection_class_ssl = redis.SSLConnection if tls else redis.Connection
        params: dict[str, Any] = super()._connparams(asynchronous)
        params.pop("username", None), params.pop("password", None)  # None: kombu read no URL (ours did)
        params.pop("credential_provider", None)
        params.update({k: v for k, v in url.items() if k != "connection_class"})
        if conninfo.ssl and isinstance(conninfo.ssl, dict):  # broker_use_ssl: CA file, client certificate…
            params.update(conninfo.ssl)
        return params

    def maybe_reauth(self) -> None:
        """kombu's event loop calls this every ``reauth_check_interval`` (kombu >= 5.7), between reads:
        re-AUTH the BRPOP connection while no BRPOP is outstanding (it re-AUTHs before its next BRPOP
        anyway; this covers a consumer whose BRPOP is paused because its prefetch is full), and replace the
        fanout pub/sub connection while it is due (it cannot AUTH while subscribed): kombu reconnects it and
        subscribes again with a fresh token, instead of Azure closing it at expiry, which stalls kombu's
        consumer."""
        super().maybe_reauth()
        brpop: Any = getattr(self.__dict__.get("client"), "connection", None)
        if not self._in_poll and _due(brpop):
            brpop.entra_reauth()
        listen: Any = getattr(self.__dict__.get("subclient"), "connection", None)
        if _due(listen):
            logger.info("Celery broker: replacing the pub/sub connection before its token expires")
            self._in_listen = None
            listen.disconnect()

    def _get_pool(self, asynchronous: bool = False) -> Any:
        params = self._connparams(asynchronous=asynchronous)
        self.keyprefix_fanout: str = str(self.keyprefix_fanout).format(db=params["db"])
        settings = self.connection.entra_settings
        return pool_for(self.connection.entra_slot, entra_settings=settings, **params)


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    """kombu's Redis transport with managed-identity sign-in (see the module docstring)."""

    Channel = Channel
    can_parse_url = True  # the channel reads the URL itself (kombu's parser drops rediss://)

    def __init__(self, client: Any, **kwargs: Any) -> None:
        # how often the event loop looks for due connections (Channel.maybe_reauth): a few attribute reads
        options = dict(client.transport_options or {})
        options.setdefault("reauth_check_interval", REAUTH_CHECK_INTERVAL)
        # on a sharded Redis (Azure Managed Redis) every key under one hash tag, the pool on its node
        prefix, self.entra_slot = pinned_slot(options, WHERE, client.hostname or "")
        if prefix is not None:
            options["global_keyprefix"] = prefix
        self.entra_prefix = options.get("global_keyprefix") or ""
        client.transport_options = options
        super().__init__(client, **kwargs)
        self.entra_settings = broker_settings(client.transport_options)


__all__ = ["Channel", "Transport", "broker_settings"]
