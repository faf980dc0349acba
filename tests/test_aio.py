"""redis-py asyncio clients on the managed identity (``django_azure_mi.cache.aredis_client`` and
``cache/aio.py``), against the enforcing Redis stand-in: sign-in without blocking the event loop, re-AUTH of
busy and idle connections on the loop, pub/sub connections replaced before expiry, the same refusals as
the sync path, no token in errors."""

from __future__ import annotations

import asyncio
import threading
import traceback

import pytest
import redis.asyncio

from django_azure_mi.cache import aredis_client
from django_azure_mi.diagnostics import SettingError

REDIS_RESOURCE = "https://redis.azure.com"


def client(server, **options):
    return aredis_client(url=server.url, ssl_ca_certs=server.ca_file, **options)


def test_an_async_client_signs_in_with_the_token(azure_redis, azure_imds):
    async def main():
        r = client(azure_redis)
        await r.set("k", "v")
        value = await r.get("k")
        await r.aclose()
        return value

    assert asyncio.run(main()) == b"v"
    assert azure_redis.auth_count >= 1 and azure_redis.closed_connections == 0


@pytest.mark.azure_imds(ttl=3600)
def test_a_cold_token_is_awaited_on_the_loop_not_in_a_thread(azure_redis, azure_imds):
    """While the identity endpoint holds the first token request, the loop keeps running and no thread
    per waiting command is started: 20 commands wait on the provider's single flight."""
    hold = azure_imds.hold()

    async def main():
        r = client(azure_redis, max_connections=50)
        tasks = [asyncio.create_task(r.set(f"k{i}", i)) for i in range(20)]
        while not hold.arrived.is_set():
            await asyncio.sleep(0.01)
        ticks = 0
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1
        waiting = not any(t.done() for t in tasks)
        # the loop's executor (run_in_executor) names its threads asyncio_N: none was started
        executor = [t.name for t in threading.enumerate() if t.name.startswith("asyncio_")]
        hold.release()
        await asyncio.gather(*tasks)
        await r.aclose()
        return ticks, waiting, executor

    ticks, waiting, executor = asyncio.run(main())
    assert ticks == 5 and waiting and executor == []
    assert azure_imds.issued_count(REDIS_RESOURCE) == 1


@pytest.mark.azure_imds(ttl=5)
def test_busy_and_idle_connections_are_reauthed_on_the_loop(azure_redis, azure_imds):
    """Ten pooled connections, idle for two token lifetimes (the loop's sweep re-AUTHs them), and one used
    every 100 ms (it re-AUTHs before its next command): none is closed, the same ones stay open."""
    from django_azure_mi import runtime
    from django_azure_mi.cache.auth import EntraAuth

    async def main():
        r = client(azure_redis, max_connections=20)
        await asyncio.gather(*(r.blpop([f"none{i}"], timeout=0.2) for i in range(10)))  # 10 connections
        clients = azure_redis.client_count
        busy = client(azure_redis)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        n = 0
        while loop.time() < deadline:
            await busy.set("busy", n)
            n += 1
            await asyncio.sleep(0.1)
        assert await r.get("busy") == str(n - 1).encode()
        await busy.aclose()
        await r.aclose()
        return clients

    clients = asyncio.run(main())
    assert clients >= 10
    assert azure_redis.closed_connections == 0, azure_redis.closures
    (entra,) = [c for c in runtime.get().components() if isinstance(c, EntraAuth)]
    assert entra.reauths >= 11 and entra.reauth_failures == 0


@pytest.mark.azure_imds(ttl=5)
def test_a_subscribed_connection_is_replaced_before_expiry_and_keeps_its_subscription(
    azure_redis, azure_imds, caplog
):
    """A PubSub that reads all the time (so its health-check interval never passes) still has its
    connection replaced by the re-AUTH due time: nothing closed at expiry, the subscription carries on."""
    caplog.set_level("INFO", logger="django_azure_mi.cache")

    async def main():
        r = client(azure_redis)
        pubsub = r.pubsub()
        await pubsub.subscribe("news")
        received = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 11
        n = 0
        while loop.time() < deadline:
            await r.publish("news", str(n))
            n += 1
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            while message is not None:
                received.append(int(message["data"]))
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
        await pubsub.aclose()
        await r.aclose()
        return n, received

    sent, received = asyncio.run(main())
    assert azure_redis.closed_connections == 0, azure_redis.closures
    replaced = caplog.text.count("replacing a pub/sub connection")
    assert replaced >= 2  # 11 s of 5 s tokens
    # Redis keeps no backlog for pub/sub: what was published between the old connection's close and the
    # new one's SUBSCRIBE, or was unread on the old one, is lost (here 1-2 messages a replacement; on Azure
    # one replacement a day). Every other message arrives, in order.
    assert received == sorted(received) and sent - len(received) <= 3 * replaced


def test_the_sync_paths_refusals_apply(azure_redis):
    with pytest.raises(SettingError, match="password="):
        client(azure_redis, password="hunter2")
    with pytest.raises(SettingError, match="credentials in the URL"):
        aredis_client(url="rediss://user:hunter2@cache.example.net:6380/0")
    with pytest.raises(SettingError, match="clear text"):
        aredis_client(url="redis://cache.example.net:6379/0")
    with pytest.raises(SettingError, match="would not verify"):
        aredis_client(url="rediss://cache.example.net:6380/0", ssl_cert_reqs="none")
    with pytest.raises(SettingError, match="database"):
        aredis_client(url="rediss://app.westeurope.redis.azure.net:10000/1")


def test_a_refused_sign_in_names_the_fix_and_carries_no_token(azure_redis, azure_imds):
    async def main():
        r = client(azure_redis, managed_identity={"USERNAME": "00000000-0000-0000-0000-000000000000"})
        try:
            await r.get("k")
        finally:
            await r.aclose()

    with pytest.raises(redis.exceptions.AuthenticationError) as info:
        asyncio.run(main())
    token = azure_imds.last_token(REDIS_RESOURCE).token
    text = "".join(traceback.format_exception(info.value))
    assert "USERNAME" in str(info.value) and token not in text
    frames = [f for f, _ in traceback.walk_tb(info.value.__traceback__) if f.f_code.co_filename != __file__]
    assert frames and all(token not in repr(frame.f_locals) for frame in frames)  # this test's own aside
