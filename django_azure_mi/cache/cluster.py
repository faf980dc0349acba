"""Clustered Redis (Azure Managed Redis, OSS clustering policy): a redis-py ``RedisCluster`` whose every node
connection signs in with the identity's token and re-AUTHs on the same schedule as a single server's.

redis-py's cluster client builds one pool per node (``connection_pool_class``), also for nodes it first hears
of in a ``MOVED`` or a topology refresh. Each of those pools is an :class:`~.connection.EntraConnectionPool`
here, and each registers with the identity's :class:`~.auth.EntraAuth`, which keeps every pool it is given (a
weak set), so idle connections on every node are re-AUTHed however often the topology changes. redis-py's own
``StreamingCredentialProvider`` route keeps one callback, and with redis-entraid's provider on a cluster its
renewal never starts (docs/azure-behaviour.md).
"""

from __future__ import annotations

import functools
from typing import Any, Final

import redis

from ..diagnostics import SettingError
from .auth import EntraSettings, check_location, check_url_transport, is_amr_host
from .connection import EntraConnectionPool


def node_pool_class(settings: EntraSettings, base: type[EntraConnectionPool] = EntraConnectionPool) -> Any:
    """What ``RedisCluster(connection_pool_class=...)`` builds each node's pool with: ``base`` with the
    identity option bound (redis-py passes only the connection keywords it knows to node pools)."""
    return functools.partial(base, entra_settings=settings)


def cluster_client(url: str, settings: EntraSettings, **kwargs: Any) -> redis.RedisCluster:
    """A ``RedisCluster`` for ``url`` (a node of the cluster, e.g. AMR's ``:10000`` entry point) signing in
    with ``settings``' identity on every node. ``kwargs``: ``RedisCluster`` / connection options
    (``ssl_ca_certs``, ``socket_timeout``…). The TLS rule and the refusal of credentials apply to the URL
    and to every node the cluster announces (each node pool checks its own host)."""
    check_location(url, settings.location)
    check_url_transport(url, dict(kwargs), settings, settings.where)
    kwargs.setdefault("connection_pool_class", node_pool_class(settings))
    return redis.RedisCluster.from_url(url, **kwargs)


# Keys of a single server's pool options that a cluster client takes elsewhere or not at all
_POOL_ONLY: Final = ("url", "parser_class", "entra_settings")


def cluster_client_like(
    url: str, settings: EntraSettings, pool_options: dict[str, Any]
) -> redis.RedisCluster:
    """:func:`cluster_client` with the options a single server's pool was given (both backends)."""
    return cluster_client(url, settings, **{k: v for k, v in pool_options.items() if k not in _POOL_ONLY})


def cluster_reply(connection: Any, subcommand: str) -> Any:
    """The reply to ``CLUSTER <subcommand>`` on ``connection``, or None where the endpoint refuses it (one
    server: "cluster support disabled"; AMR's Enterprise proxy: "not allowed")."""
    from redis.exceptions import ResponseError

    connection.send_command("CLUSTER", subcommand)
    try:
        return connection.read_response()
    except ResponseError:
        return None


def is_cluster(pool: Any) -> bool:
    """Whether the endpoint behind ``pool`` is a Redis cluster that redirects (``CLUSTER INFO`` answers):
    AMR's OSS policy, a clustered Azure Cache for Redis. A single server ("cluster support disabled") and
    AMR's Enterprise proxy ("not allowed") are not."""
    connection = pool.get_connection()
    try:
        info = cluster_reply(connection, "INFO")
    finally:
        pool.release(connection)
    if info is None:
        return False
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:" in text


# Azure Managed Redis hosts (auth.AMR_HOSTS): any of three clustering policies, so the endpoint is asked
# once. Other hosts are one server unless the settings say "cluster".
CHOICES: Final = (True, False, "auto")


def cluster_choice(value: Any, where: str, url: str = "") -> bool | None:
    """A cluster switch (``OPTIONS['CLUSTER']`` of django-redis, ``OPTIONS['cluster']`` of ours): True,
    False or "auto" (returned as None: ask the endpoint once). Absent: "auto" on an Azure Managed Redis
    host, else False."""
    if value is not None and not any(value is choice or value == choice == "auto" for choice in CHOICES):
        raise SettingError(
            "E026",
            f"{where} is {value!r}.",
            "Leave it out (Azure Managed Redis hosts are asked once whether they are a cluster, its OSS "
            "clustering policy, and get a cluster client), or set True, False or 'auto'.",
        )
    if value is None:
        value = "auto" if is_amr_host(url) else False
    return None if value == "auto" else bool(value)


class NoMulti:
    """A redis-py client whose ``pipeline()`` sends no MULTI and whose ``mget`` works across slots (on a
    cluster client): what django-redis's ``set_many``, ``delete_pattern`` and ``get_many`` are handed, so
    they work on a sharded Redis (AMR's Enterprise and OSS policies). Everything else is the client's."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def pipeline(self, transaction: bool = False, **kwargs: Any) -> Any:
        """A pipeline without MULTI unless asked for one."""
        return self._client.pipeline(transaction=transaction, **kwargs)

    def mget(self, *keys: Any) -> Any:
        if isinstance(self._client, redis.RedisCluster):
            return self._client.mget_nonatomic(list(keys))
        return self._client.mget(*keys)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)
