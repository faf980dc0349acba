"""channels_redis's layers on our asyncio pools (``cache.aio.AsyncEntraConnectionPool``).

channels_redis builds one pool per host and event loop through ``RedisChannelLayer.create_pool(index)``;
ours returns an Entra pool for the same host, so every connection the layer opens (sends, the ``BZPOPMIN``
receivers, group operations) signs in with the identity and re-AUTHs before its token expires: a receiver
blocks for at most ``brpop_timeout`` (5 s) and re-AUTHs before its next call once due.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from channels_redis import pubsub as _pubsub
from channels_redis.core import RedisChannelLayer as _CoreLayer
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..cache.aio import AsyncEntraConnectionPool
from ..cache.aio_slots import AsyncSlotPinnedPool
from ..cache.auth import EntraSettings, check_location, check_url_transport, parse_options
from ..cache.cluster import cluster_choice
from ..diagnostics import SettingError
from .detach import Detached, start
from .pubsub import PubSubLoopLayer

logger = logging.getLogger("django_azure_mi.channels")

OPTION: Final = "MANAGED_IDENTITY"
AMR_PREFIX: Final = "{asgi}"  # the core layer's default key prefix on Azure Managed Redis: one hash slot
READ_SLACK: Final = 5.0  # the core layer's read timeout: its receive's blocking time plus this
# A Redis blip (a failover, patching, a restart: Azure's take seconds) must not close every websocket whose
# consumer sends meanwhile: the layers' connections retry a lost or refused connection 9 times over about
# 8 s (redis-py's full-jitter backoff from 0.1 s, doubling, capped at 2 s), where the cache's and Celery's
# give up after about 1 s.
RETRIES: Final = 9


def config_where(config: dict[str, Any]) -> str:
    """``"CHANNEL_LAYERS['default']['CONFIG']"``: the entry whose CONFIG equals ``config`` (Channels passes
    CONFIG as keyword arguments, so only equality can tell), else ``"CHANNEL_LAYERS[…]['CONFIG']"``."""
    from django.conf import settings

    entries = getattr(settings, "CHANNEL_LAYERS", None) if settings.configured else None
    if isinstance(entries, dict):
        for alias, entry in entries.items():
            if isinstance(entry, dict) and entry.get("CONFIG") == config:
                return f"CHANNEL_LAYERS[{alias!r}]['CONFIG']"
    return "CHANNEL_LAYERS[…]['CONFIG']"


def validate_hosts(hosts: list[dict[str, Any]], settings: EntraSettings, where: str) -> None:
    """channels_redis's decoded ``hosts``: each an ``address`` URL (with pool options) or pool options;
    the TLS rule, no credentials, database 0 on Azure Managed Redis; no Sentinel (Azure has none)."""
    for n, host in enumerate(hosts):
        at = f"{where}['hosts'][{n}]"
        if "master_name" in host or "sentinels" in host:
            raise SettingError(
                "E060",
                f"{at} names Redis Sentinels: Azure Cache for Redis and Azure Managed Redis have none.",
                "Give the Redis endpoint's URL, e.g. 'rediss://<name>.redis.cache.windows.net:6380/0'.",
            )
        options = {k: v for k, v in host.items() if k != "address"}
        for key in ("password", "username", "credential_provider"):
            if options.get(key):
                raise SettingError(
                    "E021",
                    f"{at} has {key!r} while the layer signs in with a managed identity.",
                    f"Remove it; put the identity's object id in {where}['{OPTION}']['USERNAME'] if needed.",
                )
        address = host.get("address")
        if address is None:
            continue  # pool options (host, port, connection_class…): the pool applies the TLS rule
        check_location(str(address), at)
        check_url_transport(str(address), options, settings, at)


def sharded(cluster: Any, hosts: list[dict[str, Any]], where: str) -> bool:
    """Whether the core layer keeps its keys in one hash slot on a node it looks up: the ``cluster``
    option (True, False or "auto"; absent: on Azure Managed Redis hosts, whatever their policy)."""
    choices = [cluster_choice(cluster, f"{where}['cluster']", str(h.get("address") or "")) for h in hosts]
    return any(choice is not False for choice in choices)


def core_prefix(config: dict[str, Any], where: str) -> None:
    """The core layer's key prefix on a sharded Redis (changes ``config``): its scripts and transactions
    span a channel's and a group's keys, which AMR's clustered policies refuse across hash slots
    (CROSSSLOT), so every key goes under one hash tag: ``{asgi}`` unless ``prefix`` is given, and a given
    one must carry a hash tag."""
    from ..cache.slots import hash_tag

    prefix = config.get("prefix")
    if prefix is None:
        config["prefix"] = AMR_PREFIX
    elif not isinstance(prefix, str) or hash_tag(prefix) is None:
        raise SettingError(
            "E061",
            f"{where}['prefix'] is {prefix!r} on Azure Managed Redis: the layer's scripts over a channel's "
            "and a group's keys would span hash slots, which its clustered policies refuse (CROSSSLOT).",
            f"Leave 'prefix' out (the default there is {AMR_PREFIX!r}) or give it a hash tag, e.g. "
            "'{myapp}'; or use django_azure_mi.channels.RedisPubSubChannelLayer, which keeps no keys.",
        )


def receive_read_timeouts(hosts: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """The core layer's decoded ``hosts`` (copies) with its read timeout: its receive blocks in
    ``BZPOPMIN`` for ``brpop_timeout`` (5 s) and redis-py 8's default read timeout is also 5 s, so an idle
    receive often ended in a TimeoutError, which closes the websocket with 1011 (django/channels_redis#422,
    redis/redis-py#4091). Unset (or None): ``brpop_timeout`` + 5 s, which still ends a wait on a dead
    connection; a given one must be longer than ``brpop_timeout``."""
    block = float(_CoreLayer.brpop_timeout)
    hosts = [dict(host) for host in hosts]  # channels_redis's decoded hosts are the settings' own dicts
    for n, host in enumerate(hosts):
        given = host.get("socket_timeout")
        query = parse_qs(urlsplit(str(host.get("address") or "")).query).get("socket_timeout")
        if query:  # redis-py's from_url lets the URL's options win
            given = query[-1]
        if given is None:
            host["socket_timeout"] = block + READ_SLACK
            continue
        try:
            seconds = float(given)
        except (TypeError, ValueError):
            seconds = 0.0
        if seconds <= block:
            raise SettingError(
                "E062",
                f"{where}['hosts'][{n}] has socket_timeout {given!r}: the layer's receive blocks in BZPOPMIN "
                f"for up to {block:g} s, so an idle receive would end in a TimeoutError, which closes the "
                "websocket (code 1011).",
                f"Leave socket_timeout out (the layer's is {block + READ_SLACK:g} s) or make it longer "
                f"than {block:g} s.",
            )
    return hosts


class _Identity:
    """The ``MANAGED_IDENTITY`` option of both layers, validated with their ``hosts``."""

    entra_settings: EntraSettings

    def _entra_setup(self, hosts: Any, option: Any, kwargs: dict[str, Any], cluster: Any = None) -> str:
        config = {"hosts": hosts, **kwargs}
        if cluster is not None:
            config["cluster"] = cluster
        if option is not None:
            config[OPTION] = option
        where = config_where(config)
        self.entra_settings = parse_options(option, where, url_setting=f"{where}['hosts']")
        return where

    def entra_pool(self, host: dict[str, Any], slot: int | None = None) -> AsyncEntraConnectionPool:
        """An Entra pool for one of channels_redis's decoded ``hosts``; with ``slot``, pinned to the node
        that serves that hash slot (:mod:`..cache.aio_slots`)."""
        host = dict(host)
        address = host.pop("address", None)
        kwargs: dict[str, Any] = {"entra_settings": self.entra_settings, **host}
        if "retry" not in kwargs and "retry_on_error" not in kwargs:
            kwargs["retry"] = Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), RETRIES)
            kwargs["retry_on_error"] = [RedisConnectionError, RedisTimeoutError]
        if slot is not None:
            kwargs["slot"] = slot
        pool_class = AsyncEntraConnectionPool if slot is None else AsyncSlotPinnedPool
        if address is not None:
            return pool_class.from_url(address, **kwargs)
        return pool_class(**kwargs)


class RedisChannelLayer(_Identity, _CoreLayer):  # type: ignore[misc]
    """channels_redis's ``RedisChannelLayer`` on the managed identity. CONFIG: channels_redis's options
    (``hosts``, ``prefix``, ``expiry``, ``group_expiry``, ``capacity``, ``channel_capacity``,
    ``symmetric_encryption_keys``, ``serializer_format``…) and ``MANAGED_IDENTITY`` (the cache option's
    keys: ``USERNAME``, ``CLIENT_ID``, ``SCOPE``, ``VERIFY_TLS``)."""

    def __init__(
        self, hosts: Any = None, MANAGED_IDENTITY: Any = None, cluster: Any = None, **kwargs: Any
    ) -> None:
        where = self._entra_setup(
            hosts, MANAGED_IDENTITY, {**kwargs, **({"cluster": cluster} if cluster is not None else {})}
        )
        self.sharded = sharded(cluster, _pubsub.decode_hosts(hosts), where)
        if self.sharded:
            core_prefix(kwargs, where)
        super().__init__(hosts=hosts, **kwargs)
        self._cancelled_pops: dict[str, asyncio.Future[Any]] = {}
        decoded: list[dict[str, Any]] = self.hosts  # type: ignore[has-type]
        validate_hosts(decoded, self.entra_settings, where)
        self.hosts = receive_read_timeouts(decoded, where)

    async def _brpop_with_clean(self, index: int, channel: str, timeout: float) -> Any:
        """channels_redis's pop (put back what a cancelled pop left in the backup queue, ``BZPOPMIN``, then
        back up what it popped), never cut short. A process's consumers share one channel key and whichever
        receive holds the process's receive lock pops for all of them; when that consumer goes (its
        websocket closed), channels cancels its receive, and a cancel that landed after Redis had popped a
        message for another consumer lost that message: redis-py drops the connection with the answer
        unread, before the backup (django/channels#1683; stock loses it too). The pop now runs to its end
        beside the cancelled receive, and the next pop on the key waits for it, so its first step puts the
        message back, ahead of anything newer (docs/channels.md)."""
        pending = self._cancelled_pops.get(channel)
        if pending is not None and pending.get_loop() is asyncio.get_running_loop():
            # Cancelled while waiting, this receive leaves the pop in view: the next one waits for it too
            # (else it would pop beside it, and channels_redis's cleanup of the backup, which removes the
            # oldest entry, would remove the orphaned pop's message instead of its own: one lost, one
            # repeated)
            await asyncio.wait([pending])
        popping = start(super()._brpop_with_clean(index, channel, timeout))
        try:
            return await Detached(popping)  # asyncio.shield without its two extra turns of the loop
        except asyncio.CancelledError:
            if not popping.done():
                self._cancelled_pops[channel] = popping
                self.receive_cleaners.append(popping)  # close_pools() waits for it (wait_received)
                popping.add_done_callback(functools.partial(self._pop_ended, channel))
            raise

    def _pop_ended(self, channel: str, popping: asyncio.Future[Any]) -> None:
        self.receive_cleaners.remove(popping)
        if self._cancelled_pops.get(channel) is popping:
            del self._cancelled_pops[channel]
        if not popping.cancelled() and popping.exception() is not None:
            logger.warning("a cancelled receive's pop failed: %s", type(popping.exception()).__name__)

    def create_pool(self, index: int) -> AsyncEntraConnectionPool:
        """Sharded (Azure Managed Redis), pinned to the node serving the prefix's hash slot: the OSS
        clustering policy's endpoint serves no slot itself (the other policies' serve every slot)."""
        slot = int(key_slot(self.prefix.encode())) if self.sharded else None
        return self.entra_pool(self.hosts[index], slot)


class RedisPubSubChannelLayer(_Identity, _pubsub.RedisPubSubChannelLayer):  # type: ignore[misc]
    """channels_redis's ``RedisPubSubChannelLayer`` on the managed identity: its options (``hosts``,
    ``prefix``, ``symmetric_encryption_keys``, ``serializer_format``, ``on_disconnect``/``on_reconnect``)
    and ``MANAGED_IDENTITY``; ``cluster`` is checked and changes nothing (it keeps no keys: published
    messages reach subscribers on every node of a cluster). Each shard's publishing and subscribed
    connections are ours; the subscribed one is replaced before its token expires without missing or
    repeating a message (:mod:`.pubsub`)."""

    def __init__(self, *args: Any, MANAGED_IDENTITY: Any = None, cluster: Any = None, **kwargs: Any) -> None:
        hosts = args[0] if args else kwargs.get("hosts")
        rest = {k: v for k, v in kwargs.items() if k != "hosts"}
        where = self._entra_setup(hosts, MANAGED_IDENTITY, rest, cluster)
        decoded = _pubsub.decode_hosts(hosts)
        validate_hosts(decoded, self.entra_settings, where)
        sharded(cluster, decoded, where)  # the same values as the core layer's, or E026
        super().__init__(*args, **kwargs)

    def _get_layer(self) -> Any:  # channels_redis's, building our loop layer
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = PubSubLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _pubsub._wrap_close(self, loop)
        return layer
