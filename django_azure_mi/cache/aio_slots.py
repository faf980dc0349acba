"""The asyncio twin of :mod:`.slots`: a pool whose connections all go to the node that serves one hash slot.

For asyncio clients that keep every key under one hash tag: Django Channels' core layer with the prefix
``{asgi}`` (its scripts and transactions span a channel's and a group's keys, so they must stay in one slot
on Azure Managed Redis). The node is asked of the endpoint once (``CLUSTER SLOTS``) and followed on
``MOVED`` exactly as :class:`.slots.SlotPinnedPool` does; where ``CLUSTER`` is refused (the Enterprise
policy's proxy, the Non-clustered policy) the endpoint itself serves every slot. Every connection signs in
and re-AUTHs as any :class:`~.aio.AsyncEntraConnectionPool` connection does; the TLS rule is applied to each
node the cluster names (docs/azure-behaviour.md).
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import AskError, MovedError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .aio import AsyncEntraConnectionPool, async_entra_connection_class
from .slots import SLOT_MOVE_RETRIES, SlotRoute, slot_owner


class AsyncSlotRoute(SlotRoute):
    """:class:`.slots.SlotRoute` whose first lookup is awaited."""

    async def address_async(self) -> tuple[str, int]:
        address = self._address
        if address is None:
            pool: Any = self._pool
            address = self._address = self._checked(await pool.lookup_async(self.slot))
        return address


class AsyncSlotRoutedMixin:
    """Mixed into our asyncio Entra connection classes: connect to the route's node, turn redirects into
    reconnects. Without a route (the lookup's connection), a plain one."""

    host: str
    port: int

    def __init__(self, *args: Any, slot_route: AsyncSlotRoute | None = None, **kwargs: Any) -> None:
        self.slot_route = slot_route
        super().__init__(*args, **kwargs)

    async def _connect(self) -> Any:
        if self.slot_route is not None:
            self.host, self.port = await self.slot_route.address_async()
        return await super()._connect()  # type: ignore[misc]

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except (MovedError, AskError, TryAgainError) as error:  # MovedError is an AskError
            if self.slot_route is None:
                raise
            await self.disconnect()  # type: ignore[attr-defined]
            raise self.slot_route.redirected(error) from None
        except ResponseError as error:
            stale = self.slot_route.stale(error) if self.slot_route is not None else None
            if stale is None:
                raise
            await self.disconnect()  # type: ignore[attr-defined]
            raise stale from None


def async_routed_connection_class(base: type) -> type:
    entra = async_entra_connection_class(base)
    if issubclass(entra, AsyncSlotRoutedMixin):
        return entra
    return type(f"SlotRouted{entra.__name__}", (AsyncSlotRoutedMixin, entra), {})


class AsyncSlotPinnedPool(AsyncEntraConnectionPool):
    """An :class:`~.aio.AsyncEntraConnectionPool` whose connections go to the node serving ``slot``;
    ``host``/``port`` are the endpoint's."""

    def __init__(self, connection_class: Any = None, *, slot: int, **kwargs: Any) -> None:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialWithJitterBackoff

        if "retry" not in kwargs and "retry_on_error" not in kwargs:  # as slots.SlotPinnedPool: a moving slot
            kwargs["retry"] = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), SLOT_MOVE_RETRIES)
            kwargs["retry_on_error"] = [RedisConnectionError, RedisTimeoutError]
        super().__init__(connection_class or redis.asyncio.Connection, **kwargs)
        self.connection_class = async_routed_connection_class(self.connection_class)
        self.route = AsyncSlotRoute(slot, self)  # type: ignore[arg-type]
        self.connection_kwargs["slot_route"] = self.route

    async def lookup_async(self, slot: int) -> tuple[str, int]:
        """The node serving ``slot``, asked of the endpoint; the endpoint itself where ``CLUSTER`` is
        refused (AMR's Enterprise proxy) or disabled (one server)."""
        kwargs = {k: v for k, v in self.connection_kwargs.items() if k != "slot_route"}
        endpoint = (kwargs.get("host") or "localhost", int(kwargs.get("port") or 6379))
        connection: Any = self.connection_class(**kwargs)
        try:
            await connection.connect()
            await connection.send_command("CLUSTER", "SLOTS")
            try:
                ranges = await connection.read_response()
            except ResponseError:
                ranges = None
        finally:
            await connection.disconnect()
        return slot_owner(ranges, slot, endpoint)
