"""Django Channels' Redis layer on the managed identity (``django_azure_mi.channels``), against the enforcing
Redis stand-in: messages to channels and groups across token rotations, nothing closed at expiry; the
settings refused with the setting named; ``manage.py check`` and ``azure_check``."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from redis.crc import key_slot

from django_azure_mi.channels.layers import RedisChannelLayer
from django_azure_mi.diagnostics import SettingError

BACKEND = "django_azure_mi.channels.RedisChannelLayer"
PUBSUB = "django_azure_mi.channels.RedisPubSubChannelLayer"


def layer_settings(server, backend=BACKEND, **config):
    return {
        "BACKEND": backend,
        "CONFIG": {"hosts": [{"address": server.url, "ssl_ca_certs": server.ca_file}], **config},
    }


@pytest.fixture
def use_layer(settings):
    """``use_layer(entry)``: CHANNEL_LAYERS['default'] = entry, and the layer Channels builds from it."""
    from channels.layers import channel_layers

    def use(entry):
        settings.CHANNEL_LAYERS = {"default": entry}
        channel_layers.backends.clear()
        return channel_layers["default"]

    yield use
    channel_layers.backends.clear()


@pytest.mark.parametrize("backend", [BACKEND, PUBSUB])
@pytest.mark.azure_imds(ttl=5)
def test_messages_to_channels_and_groups_across_token_rotations(
    use_layer, backend, azure_redis, azure_imds, caplog
):
    """Receivers (blocked in BZPOPMIN, or subscribed) and a sender, for two token lifetimes (5 s tokens):
    every message arrives once and in order, on its channel and through a group; no connection closed at
    expiry. The pub/sub layer's subscribed connection is replaced before expiry, make-before-break."""
    caplog.set_level("INFO", logger="django_azure_mi")
    config = {"capacity": 1000} if backend == BACKEND else {}
    layer = use_layer(layer_settings(azure_redis, backend, **config))

    async def main():
        direct = await layer.new_channel()
        member = await layer.new_channel()
        await layer.group_add("room", member)
        received = {"direct": [], "group": []}

        async def receive(channel, into):
            while True:
                message = await layer.receive(channel)
                if message["n"] < 0:
                    return
                into.append(message["n"])

        receivers = [
            asyncio.create_task(receive(direct, received["direct"])),
            asyncio.create_task(receive(member, received["group"])),
        ]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 12
        n = 0
        while loop.time() < deadline:
            await layer.send(direct, {"type": "chat.message", "n": n})
            await layer.group_send("room", {"type": "chat.message", "n": n})
            n += 1
            await asyncio.sleep(0.3)  # the receivers block in BZPOPMIN between messages
        await layer.send(direct, {"type": "chat.message", "n": -1})
        await layer.group_send("room", {"type": "chat.message", "n": -1})
        await asyncio.wait_for(asyncio.gather(*receivers), 10)
        await layer.group_discard("room", member)
        await (layer.close_pools() if backend == BACKEND else layer.flush())
        return n, received

    sent, received = asyncio.run(main())
    assert sent > 30
    assert azure_redis.closed_connections == 0, azure_redis.closures
    if backend == BACKEND:
        assert received["direct"] == list(range(sent)) and received["group"] == list(range(sent))
    else:  # replaced make-before-break (channels/pubsub.py), never reconnected
        assert caplog.text.count("pub/sub connection replaced before its token expires") >= 2
        assert "replacing a pub/sub connection" not in caplog.text
        assert received["direct"] == list(range(sent)) and received["group"] == list(range(sent))


def test_the_layers_settings_are_checked_and_named(use_layer, azure_redis, settings):
    where = "CHANNEL_LAYERS['default']['CONFIG']"
    cases = [
        ({"hosts": ["rediss://cache.example.net:6380/0"], "MANAGED_IDENTITY": {"USERNAM": "x"}}, "USERNAME"),
        ({"hosts": ["redis://cache.example.net:6379/0"]}, "clear text"),
        ({"hosts": ["rediss://user:hunter2@cache.example.net:6380/0"]}, "credentials in the URL"),
        ({"hosts": [{"address": "rediss://cache.example.net:6380/0", "password": "x"}]}, "'password'"),
        ({"hosts": [{"master_name": "m", "sentinels": [("s", 26379)]}]}, "Sentinel"),
        ({"hosts": ["rediss://app.westeurope.redis.azure.net:10000/2"]}, "database"),
        ({"hosts": ["rediss://cache.example.net:6380/0?ssl_cert_reqs=none"]}, "would not verify"),
        ({"hosts": [{"address": "rediss://cache.example.net:6380/0", "socket_timeout": 5}]}, "1011"),
        ({"hosts": ["rediss://cache.example.net:6380/0?socket_timeout=3"]}, "socket_timeout"),
    ]
    for config, expected in cases:
        entry = {"BACKEND": BACKEND, "CONFIG": config}
        with pytest.raises(SettingError, match=expected) as info:
            use_layer(entry)
        assert where in str(info.value) or "CHANNEL_LAYERS['default']" in str(info.value)
        with pytest.raises(SystemCheckError, match=r"CHANNEL_LAYERS\['default'\]"):  # check says the same
            call_command("check")
    with pytest.raises(SettingError, match="'password'"):
        RedisChannelLayer(hosts=[{"address": azure_redis.url, "password": "x"}])


def test_the_core_layer_reads_longer_than_its_receive_blocks():
    """redis-py 8's default read timeout (5 s) is the receive's blocking time (channels_redis#422): ours
    reads for 10 s unless given, and a given one must be longer (E062). The settings' dicts are left as
    they were."""
    host = {"address": "rediss://cache.redis.cache.windows.net:6380/0"}
    layer = RedisChannelLayer(hosts=[host])
    assert layer.hosts[0]["socket_timeout"] == 10.0 and "socket_timeout" not in host
    assert RedisChannelLayer(hosts=[{**host, "socket_timeout": None}]).hosts[0]["socket_timeout"] == 10.0
    assert RedisChannelLayer(hosts=[{**host, "socket_timeout": 30}]).hosts[0]["socket_timeout"] == 30
    with pytest.raises(SettingError, match="longer than 5 s") as info:
        RedisChannelLayer(hosts=[{**host, "socket_timeout": 5}])
    assert info.value.check_id == "E062"


@pytest.mark.slow
@pytest.mark.parametrize("ttl", [60, 6])
def test_an_idle_receiver_keeps_its_connection(ttl, use_layer, azure_redis, request):
    """A receive with nothing to receive for 22 s. 60 s tokens: each BZPOPMIN blocks its full 5 s and ends
    with Redis's empty answer, not with a read timeout (redis-py 8's 5 s default made that a TimeoutError,
    retried three times then raised: the consumer died, its websocket closed with 1011): the receive gets
    the message sent at the end, on the connections it had. 6 s tokens: a BZPOPMIN never blocks past its
    connection's re-AUTH due time (cache/connection.py, _entra_bounded), so nothing is closed at expiry."""
    request.getfixturevalue("azure_imds").ttl = ttl
    layer = use_layer(layer_settings(azure_redis))
    admin = azure_redis.admin()

    async def main():
        channel = await layer.new_channel()
        receiving = asyncio.create_task(layer.receive(channel))
        await asyncio.sleep(1)
        before = admin.info("stats")["total_connections_received"]
        await asyncio.sleep(21)
        after = admin.info("stats")["total_connections_received"]
        await layer.send(channel, {"type": "x", "n": 1})
        try:
            return await asyncio.wait_for(receiving, 10), after - before
        finally:
            await layer.close_pools()

    message, connections = asyncio.run(main())
    assert message == {"type": "x", "n": 1}
    assert azure_redis.closed_connections == 0, azure_redis.closures
    if ttl == 60:
        assert connections <= 1, connections  # a receive cleaner's, at most; no reconnect


def test_a_consumer_that_goes_mid_pop_loses_nobody_elses_message(use_layer, azure_redis, azure_imds):
    """Two consumers of one process; the first one's receive pops for both (it holds the receive lock,
    blocked in BZPOPMIN) and is cancelled, as Channels does when its websocket closes, after Redis popped
    a message for the second and before the answer was read (another process sends while this event loop
    doesn't run). The second gets that message, and the next one after it, in order. (channels_redis's pop
    lost it: redis-py dropped the connection with the answer unread; stock does the same: django/channels
    #1683. A chat lost the last messages of a room this way when other rooms' clients left.)"""
    import threading

    entry = layer_settings(azure_redis)
    layer = use_layer(entry)

    async def main():
        leaving, staying = await layer.new_channel(), await layer.new_channel()
        holder = asyncio.create_task(layer.receive(leaving))
        await asyncio.sleep(0.5)  # in BZPOPMIN, holding the receive lock
        other = asyncio.create_task(layer.receive(staying))
        await asyncio.sleep(0.2)

        def another_process():
            sender = RedisChannelLayer(**entry["CONFIG"])

            async def send():
                for n in (1, 2):
                    await sender.send(staying, {"type": "x", "n": n})
                await sender.close_pools()

            asyncio.run(send())

        thread = threading.Thread(target=another_process)
        thread.start()
        thread.join()  # Redis has popped message 1 for the blocked receive; its answer is unread
        holder.cancel()
        try:
            first = await asyncio.wait_for(other, 10)
            second = await asyncio.wait_for(layer.receive(staying), 10)
            return first["n"], second["n"]
        finally:
            await layer.close_pools()

    assert asyncio.run(main()) == (1, 2)
    assert azure_redis.closed_connections == 0, azure_redis.closures


def test_receives_cancelled_one_after_another_lose_and_repeat_nothing(use_layer, azure_redis, azure_imds):
    """A consumer goes while its receive blocks for the process (its pop goes on); the next receive waits
    for that pop and goes too, before it ends (websockets opened and closed in a row, as a readiness check
    does); then a receive that stays. Two messages arrive: the first one that the orphaned pop took, and
    the next. They arrive once each, in order. (The waiting receive's cancel dropped the orphaned pop from
    view: the staying receive popped the second message beside it, and channels_redis's backup cleanup
    then removed the first, oldest, message: the chats on AMR lost one message and repeated another.)"""
    layer = use_layer(layer_settings(azure_redis))

    async def main():
        first, second, staying = [await layer.new_channel() for _ in range(3)]
        holder = asyncio.create_task(layer.receive(first))
        await asyncio.sleep(0.5)  # blocked in BZPOPMIN for the process, nothing to pop
        holder.cancel()
        waiting = asyncio.create_task(layer.receive(second))
        await asyncio.sleep(0.3)  # waits for the orphaned pop
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(holder, waiting)
        got = []
        receiving = asyncio.create_task(layer.receive(staying))
        await asyncio.sleep(0.3)
        for n in (1, 2):
            await layer.send(staying, {"type": "x", "n": n})
            await asyncio.sleep(0.3)
        got.append((await asyncio.wait_for(receiving, 10))["n"])
        got.append((await asyncio.wait_for(layer.receive(staying), 10))["n"])
        with contextlib.suppress(asyncio.TimeoutError):
            got.append((await asyncio.wait_for(layer.receive(staying), 7))["n"])  # a repeat would come
        await layer.close_pools()
        return got

    assert asyncio.run(main()) == [1, 2]


@pytest.mark.parametrize("backend", [BACKEND, PUBSUB])
def test_check_and_azure_check_on_a_working_layer(use_layer, backend, azure_redis, azure_imds, capsys):
    use_layer(layer_settings(azure_redis, backend))
    call_command("check")
    capsys.readouterr()  # check's own line (Django 6.1 prints it to stdout)
    call_command("azure_check", "--json", "--channel-layer", "default")
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["ok"] and result["service"] == "channels", result
    assert result["details"]["ping"] and result["details"]["send_receive"]
    assert result["identity"]["oid"] == azure_imds.object_id()
    with pytest.raises(CommandError, match="no CHANNEL_LAYERS"):
        call_command("azure_check", "--channel-layer", "nope")


@pytest.mark.parametrize("backend", [BACKEND, PUBSUB])
def test_a_probe_leaves_the_sites_layer_alone(use_layer, backend, azure_redis, azure_imds):
    """A health or status page probing the layer while the site's server uses it (on the server's event
    loop): the probe works on a layer of its own and closes only that one; the site's keeps working.
    (Probing the site's own layer failed from the probe's loop and closed the server's pools.)"""
    import threading

    from django_azure_mi import probes

    layer = use_layer(layer_settings(azure_redis, backend))
    loop = asyncio.new_event_loop()
    server = threading.Thread(target=loop.run_forever, daemon=True)
    server.start()

    def on_server(coroutine, timeout=30):
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)

    async def round_trip(n):
        channel = await layer.new_channel()
        # The pub/sub layer's new_channel returns before Redis has the SUBSCRIBE (channels_redis's, stock
        # too): send again until the one receive (a cancelled receive unsubscribes its channel) gets it
        receiving = asyncio.ensure_future(layer.receive(channel))
        for _ in range(20):
            await layer.send(channel, {"type": "x", "n": n})
            if (await asyncio.wait({receiving}, timeout=1))[0]:
                return receiving.result()
        receiving.cancel()
        raise AssertionError("nothing received in 20 s")

    try:
        assert on_server(round_trip(1)) == {"type": "x", "n": 1}
        (result,) = probes.run([t for t in probes.targets() if t.service == "channels"], deep=False)
        assert result.ok, (result.error, result.diagnosis)
        assert on_server(round_trip(2)) == {"type": "x", "n": 2}
    finally:
        on_server(layer.close_pools() if backend == BACKEND else layer.flush())
        loop.call_soon_threadsafe(loop.stop)
        server.join(5)


@pytest.mark.parametrize("backend", [BACKEND, PUBSUB])
def test_a_refused_layer_call_carries_no_token(use_layer, backend, azure_redis, azure_imds, caplog):
    """A layer whose identity Redis refuses: the error names the fix; no token in its message, its chain,
    the frames of its traceback (coroutines included), the logs or the event a real sentry-sdk (with local
    variables) sends."""
    import traceback

    from redis.exceptions import AuthenticationError

    from .test_secrets import JWT, Reporter

    wrong = {"USERNAME": "00000000-0000-0000-0000-000000000000"}
    layer = use_layer(layer_settings(azure_redis, backend, MANAGED_IDENTITY=wrong))

    async def main():
        try:
            await layer.send("some.channel", {"type": "x"})
        finally:
            await (layer.close_pools() if backend == BACKEND else layer.flush())

    with pytest.raises(AuthenticationError) as info:
        asyncio.run(main())
    token = azure_imds.last_token("https://redis.azure.com").token
    assert "USERNAME" in str(info.value)
    assert token not in "".join(traceback.format_exception(info.value)) and token not in caplog.text
    frames = [f for f, _ in traceback.walk_tb(info.value.__traceback__) if f.f_code.co_filename != __file__]
    assert frames and all(token not in repr(frame.f_locals) for frame in frames)
    reporter = Reporter()
    try:
        sent = reporter.capture(info.value)
    finally:
        reporter.close()
    assert b"AuthenticationError" in sent and b'"vars"' in sent and not JWT.search(sent)


@pytest.mark.parametrize("backend", [BACKEND, PUBSUB])
@pytest.mark.parametrize("policy", ["cluster", "enterprise", "nonclustered"])
def test_two_processes_on_each_amr_policy(backend, policy, request, azure_imds):
    """Two layers (two processes' worth: each its own channel prefix, so its own keys) on each AMR policy's
    stand-in: OSS (``cluster``), the Enterprise proxy and the Non-clustered endpoint; sends and group sends
    between them. The core layer (``cluster`` True, what an AMR host gets by default) keeps its keys under
    the hash tag {asgi} on the node serving that slot (the OSS endpoint serves none: MOVED); without a hash
    tag its group_send script spans slots and the Enterprise proxy refuses it (CROSSSLOT). The pub/sub
    layer needs no slot: a cluster delivers a message published on any node to subscribers on every node;
    on OSS a slot move while they talk is followed."""
    from django.utils.module_loading import import_string

    server = request.getfixturevalue(f"azure_redis_{policy}")
    entry = layer_settings(server, backend, **({"cluster": True} if backend == BACKEND else {}))
    first, second = (import_string(backend)(**entry["CONFIG"]) for _ in range(2))
    if backend == BACKEND:
        assert first.prefix == "{asgi}"

    async def main():
        a, b = await first.new_channel(), await second.new_channel()
        await first.group_add("room", a)
        await second.group_add("room", b)
        await second.send(a, {"type": "x", "n": 1})
        if policy == "cluster" and backend == BACKEND:  # the slot moves: both pools follow
            slot = key_slot(b"{asgi}")
            owner = server.shard_nodes.index(server.owner(slot))
            await asyncio.to_thread(server.move_slot, slot, (owner + 1) % len(server.shard_nodes))
        await first.group_send("room", {"type": "x", "n": 2})
        got = [
            await asyncio.wait_for(layer.receive(c), 5) for layer, c in ((first, a), (first, a), (second, b))
        ]
        if backend == BACKEND:  # a receive cancelled while it waits (its websocket gone) leaves no receiver
            waiting = asyncio.create_task(first.receive(await first.new_channel()))  # behind that takes the
            await asyncio.sleep(0.5)  # process's next message (the Enterprise proxy's blocked BZPOPMIN did)
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            await asyncio.sleep(0.2)  # the server sees the cancelled receive's connection close
            c = await first.new_channel()
            await second.send(c, {"type": "x", "n": 3})
            got.append(await asyncio.wait_for(first.receive(c), 5))
        for layer in (first, second):
            await (layer.close_pools() if backend == BACKEND else layer.flush())
        return [m["n"] for m in got]

    assert asyncio.run(main()) == ([1, 2, 2, 3] if backend == BACKEND else [1, 2, 2])
    assert server.closed_connections == 0


def test_the_core_layer_keeps_its_keys_in_one_slot_on_amr_hosts():
    amr = "rediss://app.westeurope.redis.azure.net:10000/0"
    assert RedisChannelLayer(hosts=[amr]).prefix == "{asgi}"
    assert RedisChannelLayer(hosts=[amr], prefix="{chat}").prefix == "{chat}"
    assert RedisChannelLayer(hosts=["rediss://cache.redis.cache.windows.net:6380/0"]).prefix == "asgi"
    assert RedisChannelLayer(hosts=[amr], cluster=False).prefix == "asgi"  # one server, the user says
    assert RedisChannelLayer(hosts=["rediss://localhost:7000/0"], cluster=True).prefix == "{asgi}"
    with pytest.raises(SettingError, match="'cluster'") as info:
        RedisChannelLayer(hosts=[amr], cluster="yes")
    assert info.value.check_id == "E026"
    with pytest.raises(SettingError, match="hash tag") as info:
        RedisChannelLayer(hosts=[amr], prefix="chat")
    assert info.value.check_id == "E061"


@pytest.mark.azure_imds(ttl=5)
def test_a_failed_make_before_break_falls_back_to_the_connections_own_replacement(
    use_layer, azure_redis, azure_imds, caplog, monkeypatch
):
    """A shard's replacement that can't finish in time (here: no time at all) keeps the old PubSub, whose
    connection then replaces itself before expiry (reconnect and resubscribe, missing what is published
    in between). Nothing is closed at expiry; messages keep arriving in order."""
    from django_azure_mi.channels import pubsub

    monkeypatch.setattr(pubsub, "STEP_TIMEOUT", 0.0)
    caplog.set_level("INFO", logger="django_azure_mi")
    layer = use_layer(layer_settings(azure_redis, PUBSUB))

    async def main():
        channel = await layer.new_channel()
        received = []

        async def receive():
            while True:
                received.append((await layer.receive(channel))["n"])

        receiver = asyncio.create_task(receive())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 11  # two token lifetimes
        n = 0
        while loop.time() < deadline:
            await layer.send(channel, {"type": "x", "n": n})
            n += 1
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        receiver.cancel()
        await layer.flush()
        return received, n

    received, sent = asyncio.run(main())
    assert "replacing a pub/sub connection failed" in caplog.text
    # (a step that needs no wait can still finish in no time: some replacements succeed)
    replaced = caplog.text.count("Redis: replacing a pub/sub connection before its token expires")
    assert replaced >= 1
    assert azure_redis.closed_connections == 0, azure_redis.closures
    assert received == sorted(set(received)) and sent - len(received) <= 3 * replaced
