"""Clustered Redis (Azure Managed Redis, OSS clustering policy): a redis-py ``RedisCluster`` whose every node
connection signs in with the identity's token and re-AUTHs on the same schedule as a single server's.

redis-py's cluster client builds one pool per node (``connection_pool_class``), also for nodes it first hears
of in a ``MOVED`` or a topology refresh. Each of those pools is an :class:`~.connection.EntraConnectionPool`
here, and each registers with the identity's :class:`~.auth.EntraAuth`, which keeps every pool it is given (a
weak set), so idle connections on every node are re-AUTHed however often the topology changes. redis-py's own
``StreamingCredentialProvider`` route keeps one callback and loses all nodes but the last after a refresh
(docs/azure-behaviour.md).
"""

from __future__ import annotations

import functools
from typing import Any

import redis

from .auth import EntraSettings, check_location, check_url_transport
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
