"""The pub/sub layer's shards on our pools, and the replacement of a shard's subscribed connection before
its token expires, make-before-break, missing and repeating nothing.

A subscribed connection cannot AUTH (RESP2), so it is replaced. A reconnect-and-resubscribe (what our
connections do on their own, the fallback here) misses what is published in between, and Redis keeps no
backlog for pub/sub. So a shard that is due replaces its PubSub itself, in its receive loop:

1. the old PubSub also subscribes to a private marker channel;
2. a new PubSub (a fresh connection from the pool) subscribes to the marker and every channel of the shard;
3. the shard publishes the marker. Redis delivers each connection's messages in publication order, and
   both connections are subscribed to everything from step 2 on, so the marker splits both streams at the
   same point: what came before it is delivered from the old connection, what comes after it from the new
   one, and the new one's messages before the marker (copies of the old one's) are dropped;
4. the old PubSub is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any, Final

from channels_redis import pubsub as _pubsub
from redis import asyncio as aioredis

logger = logging.getLogger("django_azure_mi.channels")

MARKER: Final = "__django_azure_mi_replace__"  # + a random suffix: the marker channel of one replacement
STEP_TIMEOUT: Final = 5.0  # each wait of a replacement; past it the old PubSub stays (its fallback)


class PubSubLoopLayer(_pubsub.RedisPubSubLoopLayer):  # type: ignore[misc]
    """channels_redis's per-loop pub/sub layer with our shards."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        hosts = [shard.host for shard in vars(self)["_shards"]]
        self._shards: list[Any] = [Shard(host, self) for host in hosts]


class Shard(_pubsub.RedisSingleShardConnection):  # type: ignore[misc]
    """channels_redis's shard connection on our pool; replaces its subscribed connection when due."""

    replacements = 0
    _replacing = False  # a replacement holds the lock (seconds at worst); publishing doesn't wait for it
    _gave_up: tuple[Any, float] | None = None  # (connection, its due time) whose replacement failed

    def _ensure_redis(self) -> None:
        if getattr(self, "_redis", None) is None:
            pool = self.channel_layer.channel_layer.entra_pool(self.host)
            client = aioredis.Redis(connection_pool=pool)
            self._redis, self._pubsub = client, client.pubsub()

    async def publish(self, channel: str, message: bytes) -> None:
        if self._replacing:  # the publishing client is not the subscribed one: no need to wait
            await self._redis.publish(channel, message)
        else:
            await super().publish(channel, message)

    async def _do_receiving(self) -> None:  # channels_redis's loop, with the replacement
        while True:
            try:
                pubsub = self._pubsub
                if pubsub and pubsub.subscribed:
                    if self._replacement_due(pubsub.connection):
                        await self._replace()
                        continue
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                    self._receive_message(message)
                else:
                    await asyncio.sleep(0.1)
            except (asyncio.CancelledError, asyncio.TimeoutError, GeneratorExit):
                raise
            except BaseException:
                logger.exception("Unexpected exception in receive task")
                await asyncio.sleep(1)

    def _replacement_due(self, connection: Any) -> bool:
        return (
            connection is not None
            and connection.entra_owner_due()
            and (connection, connection._entra_due) != self._gave_up
        )

    async def _replace(self) -> None:
        """See the module docstring. On any failure the new PubSub is dropped and the old one kept: its
        connection then replaces itself (reconnect and resubscribe) before its token expires."""
        async with self._lock:
            old: Any = self._pubsub
            new: Any = self._redis.pubsub()
            marker = f"{MARKER}{uuid.uuid4().hex}"
            # The old connection must not replace itself meanwhile (its health-check PING in get_message
            # would, once due): it is still signed in, and its token's expiry is what this is ahead of.
            connection = old.connection
            connection._entra_busy = self._replacing = True
            try:
                try:
                    await new.connect()
                    if new.connection._entra_exp <= connection._entra_exp:  # an idle one, signed in as old
                        await new.connection.disconnect()  # subscribing signs it in with the newer token
                    await old.subscribe(marker)
                    await new.subscribe(marker, *self._subscribed_to)
                    await _until(new, lambda m: m["type"] == "subscribe" and _text(m["channel"]) == marker)
                    await self._redis.publish(marker, b"")
                    await _until(old, lambda m: _is_marker(m, marker), deliver=self._receive_message)
                    await _until(new, lambda m: _is_marker(m, marker))  # copies of what old delivered
                except Exception as exc:
                    why = str(exc) or type(exc).__name__
                    logger.warning("Channels: replacing a pub/sub connection failed (%s); it reconnects", why)
                    await new.aclose()
                    with contextlib.suppress(Exception):  # the old one listens to its channels only
                        await old.unsubscribe(marker)
                    self._gave_up = (connection, connection._entra_due)  # until it reconnected itself
                    return
            finally:
                connection._entra_busy = self._replacing = False
            self._pubsub = new
            self.replacements += 1
            logger.info("Channels: pub/sub connection replaced before its token expires, nothing missed")
            await new.unsubscribe(marker)
            await old.aclose()


async def _until(pubsub: Any, last: Any, deliver: Any = None) -> None:
    """Read ``pubsub`` up to and including the message ``last`` matches, giving each data message before
    it to ``deliver`` (else dropping it); at most :data:`STEP_TIMEOUT` seconds."""
    async with asyncio.timeout(STEP_TIMEOUT):
        while True:
            message = await pubsub.get_message(timeout=STEP_TIMEOUT)
            if message is None:
                continue
            if last(message):
                return
            if deliver is not None and message["type"] == "message":
                deliver(message)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _is_marker(message: dict[str, Any], marker: str) -> bool:
    return message["type"] == "message" and _text(message["channel"]) == marker
