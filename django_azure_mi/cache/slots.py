"""One hash slot of a sharded Redis: pools whose connections all go to the node that serves it.

Clients that keep every key under one hash tag (kombu and Celery's result backend with a ``{celery}:`` key
prefix: queues, priorities, acks, chords) need no cluster client on Azure Managed Redis, only the node that
holds that slot. A :class:`SlotPinnedPool` asks the endpoint once (``CLUSTER SLOTS``) which node that is:

* on the OSS clustering policy, the node serving the slot (AMR's ``:10000`` is an entry point that serves
  none); when the slot moves (a rebalance, scaling), the node answers ``MOVED`` and the connection turns it
  into a ``ConnectionError`` after noting the new node, so redis-py's retry, kombu's and Celery's reconnect
  logic send the command again where the slot now lives;
* on the Enterprise policy, the Non-clustered policy and Azure Cache for Redis ``CLUSTER`` is refused or
  disabled: the endpoint itself.

A key outside the pinned slot (a key prefix without the hash tag) gets an error that says so, instead of
following it to another node and leaving the pinned slot behind. Every node connection signs in and re-AUTHs
as any :class:`~.connection.EntraConnectionPool` connection does; the TLS rule is applied to each node the
cluster names (docs/azure-behaviour.md).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from redis.crc import key_slot
from redis.exceptions import AskError, ClusterCrossSlotError, MovedError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..diagnostics import SettingError
from .auth import check_transport
from .cluster import cluster_choice, cluster_reply
from .connection import EntraConnectionPool, entra_connection_class

logger = logging.getLogger("django_azure_mi.cache")

DEFAULT_PREFIX: Final = "{celery}:"


def hash_tag(prefix: str) -> str | None:
    """The hash tag of a key prefix (``"{celery}:"`` → ``"celery"``): what decides the slot of every key
    that starts with it; None if it has none (Redis hashes the whole key then)."""
    start = prefix.find("{")
    end = prefix.find("}", start + 1)
    if start < 0 or end < 0 or end == start + 1:
        return None
    return prefix[start + 1 : end]


def pinned_slot(options: dict[str, Any], where: str, url: str) -> tuple[str | None, int | None]:
    """For a client that keeps its keys under one prefix (Celery's broker and result backend): the prefix
    and the slot to pin its pool to, from its options' ``cluster`` switch (absent: "auto" on an Azure
    Managed Redis host) and ``global_keyprefix`` (absent: :data:`DEFAULT_PREFIX`). (None, None) where the
    switch says one server (``'cluster': False``; any host but AMR's by default): nothing changes."""
    if cluster_choice(options.get("cluster"), f"{where}['cluster']", url) is False:
        return None, None
    prefix = options.get("global_keyprefix")
    if prefix is None:
        prefix = DEFAULT_PREFIX
    elif not isinstance(prefix, str):
        raise SettingError(
            "E052", f"{where}['global_keyprefix'] is {prefix!r}.", f"Use a string such as {DEFAULT_PREFIX!r}."
        )
    return prefix, prefix_slot(prefix, f"{where}['global_keyprefix']")


def prefix_slot(prefix: str, where: str) -> int:
    """The slot of every key starting with ``prefix``; a prefix without a hash tag is refused (E052)."""
    if hash_tag(prefix) is None:
        raise SettingError(
            "E052",
            f"{where} is {prefix!r}: on a sharded Redis (Azure Managed Redis) Celery's keys must share one "
            "hash slot (its transactions, multi-key BRPOP and chords span several keys), and this prefix "
            "has no hash tag.",
            f"Use a prefix with a hash tag, such as {DEFAULT_PREFIX!r} (the default on Azure Managed Redis), "
            "or set 'cluster': False if this Redis is one server.",
        )
    return int(key_slot(prefix.encode()))


NON_LOCAL: Final = (
    "non local key"  # redis-server: "Script attempted to access a non local key in a cluster node"
)
SLOT_MOVE_RETRIES: Final = 10  # tries of a command whose slot is moving (SlotPinnedPool)


class SlotRoute:
    """Which node serves ``slot``: learned from the endpoint on first use, updated by ``MOVED``."""

    def __init__(self, slot: int, pool: SlotPinnedPool) -> None:
        self.slot = slot
        self._pool = pool
        self._address: tuple[str, int] | None = None  # replaced whole (atomic): no lock to inherit at fork

    def address(self) -> tuple[str, int]:
        """The node to connect to (asked of the endpoint the first time; threads that ask at once each
        look it up, which is harmless)."""
        address = self._address
        if address is None:
            address = self._address = self._checked(self._pool.lookup(self.slot))
        return address

    def redirected(self, error: ResponseError) -> Exception:
        """What a connection raises instead of a redirect it got (``MOVED``, ``ASK``, ``TRYAGAIN``)."""
        if isinstance(error, MovedError) and error.slot_id != self.slot:
            return ClusterCrossSlotError(
                f"a key in hash slot {error.slot_id} was sent to a client that keeps every key in slot "
                f"{self.slot} (its key prefix's hash tag): give every key that prefix"
            )
        if isinstance(error, MovedError):
            address = self._address = self._checked((error.host, error.port))
            logger.info("Redis: hash slot %s moved to %s:%s; reconnecting there", self.slot, *address)
            return RedisConnectionError(f"hash slot {self.slot} moved to {address[0]}:{address[1]}")
        # ASK / TRYAGAIN: the slot is migrating; try again shortly (the retry's backoff), then MOVED
        return RedisConnectionError(f"hash slot {self.slot} is migrating ({str(error).split()[0]})")

    def stale(self, error: ResponseError) -> Exception | None:
        """What a connection raises instead of a script's "non local key" refusal: a script that declares
        no keys (channels_redis passes them as arguments) is run where it is sent, so after a slot move
        redis-server refuses it instead of answering MOVED. The node is looked up again on reconnect.
        None for any other error."""
        if NON_LOCAL not in str(error):
            return None
        self._address = None
        logger.info("Redis: hash slot %s is no longer on this node; looking it up again", self.slot)
        return RedisConnectionError(f"hash slot {self.slot} moved (a script met a non-local key)")

    def _checked(self, address: tuple[str, int]) -> tuple[str, int]:
        pool = self._pool
        kwargs = {**pool.connection_kwargs, "host": address[0], "port": address[1]}
        check_transport(pool.connection_class, kwargs, pool.entra_settings, pool.entra_settings.where)
        return address


class SlotRoutedMixin:
    """Mixed into our Entra connection classes: connect to the route's node, turn redirects into
    reconnects (see the module docstring). Without a route (the lookup's connection), a plain one."""

    host: str
    port: int

    def __init__(self, *args: Any, slot_route: SlotRoute | None = None, **kwargs: Any) -> None:
        self.slot_route = slot_route
        super().__init__(*args, **kwargs)

    def _connect(self) -> Any:
        if self.slot_route is not None:
            self.host, self.port = self.slot_route.address()
        return super()._connect()  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except (MovedError, AskError, TryAgainError) as error:  # MovedError is an AskError
            if self.slot_route is None:
                raise
            self.disconnect()  # type: ignore[attr-defined]
            raise self.slot_route.redirected(error) from None


def routed_connection_class(base: type) -> type:
    """``base`` with the Entra mixin and :class:`SlotRoutedMixin`."""
    entra = entra_connection_class(base)
    if issubclass(entra, SlotRoutedMixin):
        return entra
    return type(f"SlotRouted{entra.__name__}", (SlotRoutedMixin, entra), {})


class SlotPinnedPool(EntraConnectionPool):
    """An :class:`~.connection.EntraConnectionPool` whose connections go to the node serving ``slot``
    (see the module docstring); ``host``/``port`` are the endpoint's."""

    def __init__(self, connection_class: Any = None, *, slot: int, **kwargs: Any) -> None:
        import redis
        from redis.backoff import ExponentialWithJitterBackoff
        from redis.retry import Retry

        if "retry" not in kwargs and "retry_on_error" not in kwargs:
            # While a slot migrates, the nodes answer ASK, then MOVED (each a retry here) until every node
            # knows the new owner: a rebalance with many keys in the slot outlasted 3 tries (about 0.5 s)
            # on a loaded machine. 10 tries wait up to about 6 s.
            kwargs["retry"] = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), SLOT_MOVE_RETRIES)
            kwargs["retry_on_error"] = [RedisConnectionError, RedisTimeoutError]
        super().__init__(connection_class or redis.Connection, **kwargs)
        self.connection_class = routed_connection_class(self.connection_class)
        self.route = SlotRoute(slot, self)
        self.connection_kwargs["slot_route"] = self.route

    def lookup(self, slot: int) -> tuple[str, int]:
        """The node serving ``slot``, asked of the endpoint; the endpoint itself where ``CLUSTER`` is
        refused (AMR's Enterprise proxy) or disabled (one server)."""
        kwargs = {k: v for k, v in self.connection_kwargs.items() if k != "slot_route"}
        endpoint = (kwargs.get("host") or "localhost", int(kwargs.get("port") or 6379))
        connection = self.connection_class(**kwargs)
        try:
            connection.connect()
            ranges = cluster_reply(connection, "SLOTS")
        finally:
            connection.disconnect()
        return slot_owner(ranges, slot, endpoint)


def slot_owner(ranges: Any, slot: int, endpoint: tuple[str, int]) -> tuple[str, int]:
    """The node serving ``slot`` in a ``CLUSTER SLOTS`` reply; ``endpoint`` where there is none (refused)."""
    if ranges is None:
        return endpoint
    for first, last, primary, *_ in ranges:
        if first <= slot <= last:
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            return (host or endpoint[0], int(primary[1]))
    raise RedisConnectionError(f"no node of {endpoint[0]}:{endpoint[1]} serves hash slot {slot}")


def pool_for(slot: int | None, **kwargs: Any) -> EntraConnectionPool:
    """The pool of a client that :func:`pinned_slot` judged: pinned to ``slot``'s node, or an ordinary
    one (``slot`` None)."""
    if slot is None:
        return EntraConnectionPool(**kwargs)
    return SlotPinnedPool(slot=slot, **kwargs)


__all__ = [
    "DEFAULT_PREFIX",
    "SlotPinnedPool",
    "SlotRoute",
    "hash_tag",
    "pinned_slot",
    "pool_for",
    "prefix_slot",
]
