"""redis-py asyncio connections and pools that sign in with Entra tokens and re-AUTH before expiry, on the
same runtime, identity and schedule as the sync ones (:mod:`.connection`), for asyncio code: Django
Channels' layers, your own coroutines (:func:`django_azure_mi.cache.aredis_client`).

* A new connection AUTHs with (object id, current token). The token is read without an await when it is
  cached; a cold one is awaited on the event loop (the provider's single flight), never in a thread.
* A connection in use re-AUTHs itself before its next command once it is due; a subscribed (pub/sub) one
  is replaced instead, and its PubSub subscribes again, as after any reconnect.
* Idle pooled connections are re-AUTHed on their own event loop: one sweep task per loop and identity
  (:class:`AsyncSweeps`), woken by each new token, taking due connections out of their pools as the sync
  sweeper does.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError

from .. import runtime
from ..core.errors import describe_error, scrubbed
from ..core.token import Token
from .auth import EntraAuth, EntraSettings, UsesEntra
from .connection import EntraConnectionState, pool_kwargs

logger = logging.getLogger("django_azure_mi.cache")


class AsyncEntraConnectionMixin(EntraConnectionState):
    """Mixed into redis-py's asyncio Connection classes: AUTH with the token on connect, re-AUTH when due."""

    pubsub_class = redis.asyncio.client.PubSub

    async def on_connect(self) -> None:
        if hasattr(super(), "on_connect_check_health"):
            await super().on_connect()  # type: ignore[misc]  # calls our on_connect_check_health
        else:
            await self._entra_connect(super().on_connect)  # type: ignore[misc]

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        parent = super()
        await self._entra_connect(lambda: parent.on_connect_check_health(check_health))  # type: ignore[attr-defined]

    async def _entra_connect(self, connect: Any) -> None:
        entra = self.entra  # resolved once per connect
        token = await entra.token_async()
        self._entra_sign_in(entra, token)
        error: BaseException | None = None
        try:
            await connect()
        except Exception as exc:  # redis-py's frames hold the AUTH arguments: keep none of them
            error = scrubbed(exc)
        finally:
            self.credential_provider = None
        self._entra_signed_in(entra, token, error)

    async def disconnect(self, *args: Any, **kwargs: Any) -> None:
        self._entra_due = self._entra_health_by = float("inf")
        await super().disconnect(*args, **kwargs)  # type: ignore[misc]

    async def send_command(self, *args: Any, **kwargs: Any) -> None:
        if self._entra_blocks(args):  # see EntraConnectionState._entra_bounded
            await self._entra_if_due()
            args = self._entra_bounded(args)
        await super().send_command(*args, **kwargs)  # type: ignore[misc]

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._entra_clock.time() >= self._entra_due and not self._entra_busy:  # the hot path: inline
            await self._entra_if_due()
        await super().send_packed_command(command, check_health)  # type: ignore[misc]

    async def _entra_if_due(self) -> None:
        if self._entra_clock.time() >= self._entra_due and not self._entra_busy:
            if self._entra_subscribed():
                if not self._entra_replace_now():
                    return
                logger.info("Redis: replacing a pub/sub connection before its token expires")
                await self.disconnect()  # reconnected by redis-py; its PubSub subscribes again
            else:
                await self.entra_reauth()

    async def entra_reauth(self) -> None:
        """AUTH again with the current token if it is newer than the one this connection used."""
        if self._entra_subscribed():
            return  # replaced instead (see EntraConnectionState._entra_subscribed)
        entra = self.entra
        now = entra.clock.time()
        try:
            token: Token | None = await entra.token_async()
        except RedisConnectionError:
            token = None
        if not self._entra_newer(entra, token, now):
            return
        assert token is not None
        error: BaseException | None = None
        self._entra_busy = True
        try:
            await self._entra_send_auth(entra.username(token), token)
        except Exception as exc:  # redis-py's frames hold the packed AUTH command: keep none of them
            error = scrubbed(exc)
        finally:
            self._entra_busy = False
        self._entra_reauthed(entra, token, error, now)

    async def _entra_send_auth(self, username: str, token: Token) -> None:
        await super().send_packed_command(self.pack_command("AUTH", username, token.value), False)  # type: ignore[misc,attr-defined]
        await self.read_response()  # type: ignore[attr-defined]


class AsyncEntraConnection(AsyncEntraConnectionMixin, redis.asyncio.Connection):
    pass


class AsyncEntraSSLConnection(AsyncEntraConnectionMixin, redis.asyncio.SSLConnection):
    pass


class AsyncEntraUnixDomainSocketConnection(
    AsyncEntraConnectionMixin, redis.asyncio.UnixDomainSocketConnection
):
    pass


_KNOWN = {
    redis.asyncio.Connection: AsyncEntraConnection,
    redis.asyncio.SSLConnection: AsyncEntraSSLConnection,
    redis.asyncio.UnixDomainSocketConnection: AsyncEntraUnixDomainSocketConnection,
}


def async_entra_connection_class(base: type) -> type:
    """An asyncio ``base`` (Connection, SSLConnection, …) with the Entra mixin."""
    if issubclass(base, AsyncEntraConnectionMixin):
        return base
    return _KNOWN.get(base) or type(f"AsyncEntra{base.__name__}", (AsyncEntraConnectionMixin, base), {})


class AsyncEntraConnectionPool(UsesEntra, redis.asyncio.ConnectionPool):
    """A redis-py asyncio ConnectionPool whose connections sign in with Entra tokens and re-AUTH before
    expiry. Like every asyncio pool it belongs to the event loop that first used it."""

    def __init__(
        self,
        connection_class: type = redis.asyncio.Connection,
        *,
        entra_settings: EntraSettings,
        **kwargs: Any,
    ) -> None:
        connection_class = async_entra_connection_class(pool_kwargs(connection_class, kwargs, entra_settings))
        super().__init__(connection_class=connection_class, entra_settings=entra_settings, **kwargs)
        self.entra_settings = entra_settings

    def make_connection(self) -> Any:
        async_sweeps(self.entra).register(self)  # this loop's sweep looks after the idle connections
        return super().make_connection()  # type: ignore[no-untyped-call]

    async def reauth_idle(self, now: float) -> None:
        """Take the idle connections that are due out of the pool, re-AUTH them, put them back."""
        async with self._lock:
            idle: list[Any] = self._available_connections
            due = [c for c in idle if c.entra_due(now)]
            for conn in due:
                self._available_connections.remove(conn)
                self._in_use_connections.add(conn)
        # All at once: each AUTH waits on its own connection, so the sweep takes one round trip however
        # many are due (one after another, a pool of 50 idle connections on a busy loop took longer than
        # the margin between the due time and the token's expiry: closures on a loaded machine)
        await asyncio.gather(*(self._reauth_one(conn) for conn in due))

    async def _reauth_one(self, conn: Any) -> None:
        try:
            await conn.entra_reauth()
        except Exception:
            await conn.disconnect()  # broken: the next user reconnects with a fresh token
        finally:
            await self.release(conn)


@dataclass(eq=False)
class _LoopSweep:
    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event
    pools: weakref.WeakSet[AsyncEntraConnectionPool] = field(default_factory=weakref.WeakSet)
    task: asyncio.Task[None] | None = None


class AsyncSweeps:
    """The asyncio side of one :class:`~.auth.EntraAuth`: a sweep task on each event loop that has pools
    of ours, re-AUTHing their idle connections on the sweeper's schedule. A runtime component: closed (its
    tasks cancelled) with the runtime; after a fork the child starts afresh."""

    def __init__(self, auth: EntraAuth) -> None:
        self.auth = auth
        self.closed = False
        self._lock = threading.Lock()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopSweep] = (
            weakref.WeakKeyDictionary()
        )
        auth.wakers.append(self._wake_all)

    def register(self, pool: AsyncEntraConnectionPool) -> None:
        """Called on ``pool``'s event loop, when it makes a connection."""
        loop = asyncio.get_running_loop()
        with self._lock:
            sweep = self._loops.get(loop)
            if sweep is None:
                sweep = self._loops[loop] = _LoopSweep(loop, asyncio.Event())
            if (sweep.task is None or sweep.task.done()) and not self.closed:
                sweep.task = loop.create_task(self._run(sweep), name="django-azure-mi redis re-auth")
            sweep.pools.add(pool)
        self.auth.ensure_sweeper()  # new tokens wake the sweeps (the provider subscription)

    def _wake_all(self) -> None:
        """From any thread: each loop's sweep looks again (a new token, a shorter interval)."""
        for sweep in list(self._loops.values()):
            with suppress(RuntimeError):  # that loop is closed
                sweep.loop.call_soon_threadsafe(sweep.wake.set)

    async def _run(self, sweep: _LoopSweep) -> None:
        auth = self.auth
        while not self.closed and not auth.sweeper.closed:
            sweep.wake.clear()
            now = auth.clock.time()
            for pool in list(sweep.pools):
                try:
                    await pool.reauth_idle(now)
                except Exception as exc:
                    logger.warning("redis re-AUTH sweep failed: %s", describe_error(exc))
            await auth.clock.wait_async(sweep.wake, auth.interval)

    def close(self) -> None:
        self.closed = True
        with suppress(ValueError):
            self.auth.wakers.remove(self._wake_all)
        for sweep in list(self._loops.values()):
            if sweep.task is not None:
                with suppress(RuntimeError):
                    sweep.loop.call_soon_threadsafe(sweep.task.cancel)

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._loops = weakref.WeakKeyDictionary()  # the parent's loops and tasks do not run here


def async_sweeps(auth: EntraAuth) -> AsyncSweeps:
    """The runtime's :class:`AsyncSweeps` for ``auth``."""
    return runtime.get().component(("redis-async-sweeps", auth.settings), lambda: AsyncSweeps(auth))
