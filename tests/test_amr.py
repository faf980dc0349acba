"""Azure Managed Redis stand-ins behave toward clients as AMR does (docs/azure-behaviour.md): on the OSS
clustering policy the entry endpoint answers MOVED, every shard signs connections in with the identity's
tokens on its own and closes them at expiry unless re-AUTHed, and a slot can move under a client."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import AuthenticationError, MovedError, ResponseError

from django_azure_mi import get_token_provider
from django_azure_mi.testing.clock import EndpointCredential, FakeClock, on_fake_clock, wait_for

REDIS = "https://redis.azure.com/.default"


def token_client(server, oid: str, token: str, *, cluster: bool = True, **options):
    cls = redis.RedisCluster if cluster else redis.Redis
    return cls.from_url(server.url, ssl_ca_certs=server.ca_file, username=oid, password=token, **options)


def keys_on_every_shard(client: redis.RedisCluster, server) -> list[str]:
    """One key per shard (by its slot), so a test touches every node."""
    found: dict[str, str] = {}
    for n in range(1000):
        key = f"k{n}"
        found.setdefault(server.owner(client.keyslot(key)).name, key)
        if len(found) == server.shards:
            return list(found.values())
    raise AssertionError("no key for some shard")


def test_the_oss_entry_endpoint_answers_moved_and_a_cluster_client_reaches_every_shard(
    azure_redis_cluster, azure_imds
):
    token = get_token_provider(REDIS).get_token(REDIS).token
    oid = azure_imds.object_id()
    with pytest.raises(MovedError):  # the entry node owns no slot
        token_client(azure_redis_cluster, oid, token, cluster=False).set("a", 1)
    client = token_client(azure_redis_cluster, oid, token)
    keys = keys_on_every_shard(client, azure_redis_cluster)
    for key in keys:
        client.set(key, key)
    assert [client.get(key) for key in keys] == [key.encode() for key in keys]
    announced = {(node.host, node.port) for node in client.get_primaries()}
    assert announced == {("127.0.0.1", node.port) for node in azure_redis_cluster.shard_nodes}
    with pytest.raises(AuthenticationError):  # a token is a password only for its own identity
        token_client(azure_redis_cluster, "someone-else", token, cluster=False).ping()
    client.close()


def test_every_shard_closes_its_connection_at_token_expiry_unless_reauthed(azure_redis_cluster, azure_imds):
    """Each node enforces on its own: a client that re-AUTHs one node's connection keeps that one; the
    others close when the token expires (judged on the identity endpoint's clock)."""
    with on_fake_clock(FakeClock(time.time()), azure_imds) as clock:
        endpoint = EndpointCredential(azure_imds.url)  # no cache: each call is a new token
        first = endpoint.get_token(REDIS).token
        oid = azure_imds.object_id()
        client = token_client(azure_redis_cluster, oid, first)
        keys = keys_on_every_shard(client, azure_redis_cluster)
        for key in keys:
            client.set(key, 1)
        kept = client.get_node_from_key(keys[0])
        clock.advance(azure_imds.ttl - 60)
        fresh = endpoint.get_token(REDIS).token
        kept.redis_connection.execute_command("AUTH", oid, fresh)
        clock.advance(120)  # past the first token's expiry
        wait_for(lambda: azure_redis_cluster.closed_connections >= len(keys) - 1)
        time.sleep(0.1)  # and no more than those
        assert azure_redis_cluster.closed_connections == len(keys) - 1
        assert kept.redis_connection.get(keys[0]) == b"1"  # the re-AUTHed connection is still open
        client.close()


def test_a_slot_moves_to_another_shard_and_clients_follow_moved(azure_redis_cluster, azure_imds):
    token = get_token_provider(REDIS).get_token(REDIS).token
    client = token_client(azure_redis_cluster, azure_imds.object_id(), token)
    client.set("moving", "v")
    slot = client.keyslot("moving")
    before = azure_redis_cluster.owner(slot)
    to = next(i for i, node in enumerate(azure_redis_cluster.shard_nodes) if node is not before)
    azure_redis_cluster.move_slot(slot, to)
    assert azure_redis_cluster.owner(slot) is azure_redis_cluster.shard_nodes[to]
    assert client.get("moving") == b"v"  # MOVED, then the client's slot map is refreshed
    assert client.get_node_from_key("moving").port == azure_redis_cluster.shard_nodes[to].port
    client.close()


def test_the_enterprise_endpoint_keeps_the_slot_rules_of_a_sharded_database(
    azure_redis_enterprise, azure_imds
):
    """One endpoint, no redirects: the six multi-key commands the proxy splits work across slots, the
    one-slot families get CROSSSLOT, CLUSTER is not allowed, only database 0 exists."""
    token = get_token_provider(REDIS).get_token(REDIS).token
    client = token_client(azure_redis_enterprise, azure_imds.object_id(), token, cluster=False)
    keys = [f"key{n}" for n in range(8)]  # several slots
    assert len({key_slot(k.encode()) for k in keys}) > 1
    assert client.mset({k: k for k in keys})
    assert client.mget([*keys, "missing"]) == [k.encode() for k in keys] + [None]
    assert client.exists(*keys, "missing") == len(keys)
    assert client.touch(*keys) == len(keys)
    pipe = client.pipeline(transaction=False)  # a plain pipeline across slots
    for k in keys:
        pipe.get(k)
    assert pipe.execute() == [k.encode() for k in keys]
    with pytest.raises(ResponseError, match="same slot"):
        client.pipeline(transaction=True).set(keys[0], 1).set(keys[1], 1).execute()
    with pytest.raises(ResponseError, match="same slot"):
        client.eval("return redis.call('GET', KEYS[1])", 2, keys[0], keys[1])
    with pytest.raises(ResponseError, match="same slot"):
        client.brpop([keys[0], keys[1]], timeout=1)
    with pytest.raises(ResponseError, match="same slot"):
        client.rename(keys[0], keys[1])
    tagged = ["{t}a", "{t}b"]  # one slot: transactions and scripts work
    assert client.pipeline(transaction=True).set(tagged[0], 1).set(tagged[1], 2).execute() == [True, True]
    with pytest.raises(ResponseError, match="not allowed"):
        client.execute_command("CLUSTER", "SLOTS")
    with pytest.raises(ResponseError, match="DB index is out of range"):
        client.execute_command("SELECT", 1)
    assert client.execute_command("SELECT", 0)
    assert client.delete(*keys, *tagged) == len(keys) + 2
    assert client.unlink(*keys) == 0
    pubsub = client.pubsub()
    pubsub.subscribe("news")
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    client.publish("news", "hello")
    assert pubsub.get_message(timeout=2)["data"] == b"hello"
    pubsub.close()
    client.close()


@pytest.mark.parametrize("policy", ["single", "oss", "enterprise", "none"])
def test_a_client_that_goes_ends_its_blocked_command(policy, azure_imds):
    """A client closed while its BZPOPMIN waits (a cancelled channels_redis receive): the command ends with
    it, as redis-server ends a direct client's, so the next message goes to the next receiver. (The
    Enterprise stand-in's proxy, answering per command, kept it waiting upstream: a ghost receiver that
    took the next message and lost it.)"""
    from django_azure_mi.testing.redis import redis_stand_in

    with redis_stand_in(policy) as server:
        server.add_identity(azure_imds.object_id())
        server.attach(azure_imds)
        token = get_token_provider(REDIS).get_token(REDIS).token  # issued after attach: a password there
        cluster = policy == "oss"
        # no retry: its command must end with its connection (a retry on a loaded CI machine re-issued the
        # BZPOPMIN after the check below and took the message)
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        once = Retry(NoBackoff(), 0)
        gone = token_client(server, azure_imds.object_id(), token, cluster=cluster, retry=once)
        key = "{t}queue"
        waiting = threading.Thread(target=_pop, args=(gone, key))
        waiting.start()
        admins = server.admins()

        def blocked():
            return sum(admin.info("clients")["blocked_clients"] for admin in admins)

        assert wait_for(lambda: blocked() == 1, 5), "the BZPOPMIN did not block"
        gone.close()  # the socket closes under the waiting command
        assert wait_for(lambda: blocked() == 0, 5), "a closed client's BZPOPMIN still waits on the server"
        waiting.join(30)
        assert not waiting.is_alive(), "the closed client's BZPOPMIN was retried"
        client = token_client(server, azure_imds.object_id(), token, cluster=cluster)
        client.zadd(key, {"m": 1})
        assert client.bzpopmin(key, 2) == (key.encode(), b"m", 1.0)
        client.close()


def _pop(client, key):
    with contextlib.suppress(Exception):  # its connection closed under it
        client.bzpopmin(key, 30)


def test_the_non_clustered_policy_has_database_0_only(azure_redis_nonclustered, azure_imds):
    token = get_token_provider(REDIS).get_token(REDIS).token
    client = token_client(azure_redis_nonclustered, azure_imds.object_id(), token, cluster=False)
    client.mset({"a": 1, "b": 2})  # no slot rules
    assert client.mget("a", "b") == [b"1", b"2"]
    with pytest.raises(ResponseError, match="DB index is out of range"):
        client.execute_command("SELECT", 1)
    client.close()


def test_a_cluster_client_reauths_idle_connections_on_every_node_through_topology_changes(
    azure_redis_cluster, azure_imds, settings
):
    """Every node's pool is an Entra pool registered with the identity's sweeper: idle connections on
    every shard live through two token lifetimes (on a fake clock), also after a slot moved and the
    client refreshed its topology (redis-entraid's provider, which keeps one on_next callback, is compared
    on real time below)."""
    from django_azure_mi import runtime
    from django_azure_mi.cache.auth import EntraAuth, parse_options
    from django_azure_mi.cache.cluster import cluster_client

    settings.AZURE_MANAGED_IDENTITY = {"CREDENTIAL": "django_azure_mi.testing.clock.endpoint_credential"}
    server = azure_redis_cluster
    with on_fake_clock(FakeClock(time.time()), azure_imds) as clock:
        client = cluster_client(server.url, parse_options({}), ssl_ca_certs=server.ca_file)
        keys = keys_on_every_shard(client, server)
        for key in keys:
            client.set(key, "v")
        connections = server.client_count
        assert connections >= server.shards  # one idle connection per shard at least
        (entra,) = [c for c in runtime.get().components() if isinstance(c, EntraAuth)]
        _step(clock, azure_imds.ttl + 120)
        assert server.closed_connections == 0 and entra.reauths >= server.shards
        slot = client.keyslot(keys[0])
        to = next(i for i, n in enumerate(server.shard_nodes) if n is not server.owner(slot))
        server.move_slot(slot, to)
        assert client.get(keys[0]) == b"v"  # MOVED: the client refreshes its slot map
        for key in keys:
            assert client.get(key) == b"v"
        before = entra.reauths
        _step(clock, azure_imds.ttl + 120)
        assert server.closed_connections == 0, server.closures
        assert entra.reauths > before
        assert [client.get(key) for key in keys] == [b"v"] * len(keys)
        client.close()


def _step(clock: FakeClock, seconds: float, by: float = 10.0) -> None:
    """Advance the clock in steps, giving the sweeper (real threads) a moment after each."""
    for _ in range(int(seconds / by)):
        clock.advance(by)
        time.sleep(0.01)


def exercise(cache) -> None:
    """Every operation of Django's cache API, over keys in many slots."""
    keys = [f"key{n}" for n in range(12)]
    cache.set("one", 1)
    assert cache.get("one") == 1 and cache.add("one", 2) is False and cache.add("two", 2) is True
    cache.set_many({k: k for k in keys}, timeout=60)
    assert cache.get_many([*keys, "missing"]) == {k: k for k in keys}
    assert cache.has_key(keys[0]) and cache.touch(keys[0], 30)
    assert cache.incr("one", 5) == 6 and cache.decr("one") == 5
    cache.set_many({"gone": 1}, timeout=0)
    assert cache.get("gone") is None
    cache.delete_many(keys[:6])
    assert cache.get_many(keys) == {k: k for k in keys[6:]}
    assert cache.delete(keys[6]) is True
    assert cache.clear() is not False
    assert cache.get_many(keys) == {} and cache.get("one") is None


def test_our_redis_cache_works_on_every_clustering_policy(amr, azure_imds, settings):
    """The built-in backend (Django's RedisCache with our client): the endpoint is asked once whether it
    is a cluster; set_many runs no MULTI."""
    from django.core.cache import caches

    settings.CACHES = {"default": amr.cache_settings("builtin")}
    exercise(caches["default"])
    assert amr.closed_connections == 0


def test_django_redis_with_our_client_works_on_every_clustering_policy(amr, azure_imds, settings):
    """django-redis with our factory and client class: a cluster client where the endpoint is one (asked
    once), no MULTI in set_many/delete_pattern, get_many across slots."""
    from django.core.cache import caches

    entry = amr.cache_settings("django-redis")
    entry["OPTIONS"]["CLIENT_CLASS"] = "django_azure_mi.cache.EntraClient"
    settings.CACHES = {"default": entry}
    cache = caches["default"]
    exercise(cache)
    cache.set_many({f"p{n}": n for n in range(20)})
    assert cache.delete_pattern("p*") == 20
    assert amr.closed_connections == 0


@pytest.mark.integration
@pytest.mark.parametrize("policy", ["oss", "enterprise"])
def test_a_users_suite_runs_on_an_amr_policy_with_one_option(policy):
    """``--azure-redis-policy`` makes ``azure_redis`` an Azure Managed Redis of that policy: docs/redis.md's
    cache test passes on it unchanged (its ``cache_settings()`` fit the policy)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parent.parent
    test = "tests/test_fixtures.py::test_cache"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", test]
    done = subprocess.run(
        [*command, "--azure-redis-policy", policy, "-o", "addopts="],
        cwd=root, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr


def test_azure_check_reports_what_each_policy_is(amr, azure_imds, settings):
    """The deep probe says what the endpoint is (a client can tell OSS, a proxy that refuses CLUSTER, one
    server); Celery's probes name the node serving its key prefix's slot on OSS."""
    from .test_azure_check import assert_no_tokens, azure_check

    settings.CACHES = {"b": amr.cache_settings("builtin"), "r": amr.cache_settings("django-redis")}
    for name, value in amr.celery_settings().items():
        setattr(settings, f"CELERY_{name.upper()}", value)
    output, error = azure_check("--cache", "b", "--cache", "r", "--celery")
    assert error is None, output
    expected = {
        "oss": ("OSS cluster, 3 shards", "OSS cluster, the node serving hash slot 3213"),
        "enterprise": ("proxy endpoint (CLUSTER refused",) * 2,
        "none": ("one server (not clustered)",) * 2,
    }[amr.policy]
    assert output.count(expected[0]) + (output.count(expected[1]) if expected[1] != expected[0] else 0) == 4
    assert "advice" not in output and "runs MULTI" not in output
    assert_no_tokens(output, azure_imds)


def test_moved_and_crossslot_are_diagnosed_with_the_fix(azure_redis_cluster, azure_imds, settings):
    from redis.exceptions import ClusterCrossSlotError

    from django_azure_mi.cache.diagnosis import diagnose_error
    from django_azure_mi.celery.transport import broker_settings

    from .test_azure_check import azure_check

    entry = azure_redis_cluster.cache_settings("django-redis")
    entry["OPTIONS"]["CLUSTER"] = False  # a single-server client on the OSS entry point: MOVED
    default = azure_redis_cluster.cache_settings("django-redis")
    del default["OPTIONS"]["CLIENT_CLASS"]  # django-redis's DefaultClient: works, but set_many runs MULTI
    settings.CACHES = {"single": entry, "default": default}
    output, error = azure_check("--cache", "single")
    assert error is not None, output
    assert "Redis answered MOVED: the endpoint is a cluster" in output
    assert "CACHES['single']['OPTIONS']['CLUSTER'] = 'auto'" in output
    output, error = azure_check("--cache", "default")
    assert error is None and "CLIENT_CLASS DefaultClient runs MULTI" in output, output
    crossslot = ClusterCrossSlotError("Keys in request don't hash to the same slot")
    failure = diagnose_error(crossslot, "CACHES['default']")
    assert failure.kind == "cross-slot" and "django_azure_mi.cache.EntraClient" in failure.fix
    failure = diagnose_error(crossslot, broker_settings({}))
    assert "CELERY_BROKER_TRANSPORT_OPTIONS['global_keyprefix'] = '{celery}:'" in failure.fix


@pytest.mark.slow
@pytest.mark.once
@pytest.mark.azure_imds(ttl=15)
def test_redis_entraid_lets_every_node_connection_expire_where_ours_re_auths_them(
    azure_redis_cluster, azure_imds, settings, caplog
):
    """The comparison the AMR issue asked for, on real time: the same RedisCluster session (idle
    connections on every shard, a slot moved, the topology refreshed, two token lifetimes idle) with
    redis-entraid's managed-identity provider (the one Redis's docs recommend) and with ours. redis-entraid's
    token manager starts on the first connection, which RedisCluster opens (CLUSTER SLOTS) before it has
    registered a re-AUTH callback; the manager finds none, logs "Renewal cancelled" and never renews: the
    server closes every node's connections at each expiry and each closure costs the client a reconnect
    and a topology refresh. Ours re-AUTHs every node's connections: no closure. docs/azure-behaviour.md
    §3 keeps the finding; this test fails when a release of either library changes it."""
    from redis_entraid.cred_provider import create_from_managed_identity
    from redis_entraid.identity_provider import ManagedIdentityType

    from django_azure_mi.cache import redis_client

    server = azure_redis_cluster
    lifetimes = 2
    settings.AZURE_MANAGED_IDENTITY = {}  # the real ManagedIdentityCredential on the emulator

    def session(client: redis.RedisCluster) -> tuple[int, int]:
        """(connections the server closed over ``lifetimes`` idle token lifetimes, shards holding a key)."""
        closed = server.closed_connections
        keys = keys_on_every_shard(client, server)
        for key in keys:
            client.set(key, "v")
        slot = client.keyslot(keys[0])
        to = next(i for i, n in enumerate(server.shard_nodes) if n is not server.owner(slot))
        server.move_slot(slot, to)
        assert client.get(keys[0]) == b"v"  # MOVED
        client.nodes_manager.initialize()  # what redis-py does every few MOVEDs or after a connection error
        for key in keys:
            assert client.get(key) == b"v"  # an idle connection on every shard holding a key
        shards = len({client.get_node_from_key(key).name for key in keys})
        time.sleep(lifetimes * azure_imds.ttl + 3)
        assert [client.get(key) for key in keys] == [b"v"] * len(keys)  # both answer (theirs reconnects)
        client.close()
        return server.closed_connections - closed, shards

    # ours first: redis-entraid's client leaves a connection open after close(), which expires later
    ours, _ = session(redis_client(url=server.url, cluster=True, ssl_ca_certs=server.ca_file))
    provider = create_from_managed_identity(
        ManagedIdentityType.SYSTEM_ASSIGNED, resource="https://redis.azure.com"
    )
    theirs, shards = session(
        redis.RedisCluster.from_url(server.url, credential_provider=provider, ssl_ca_certs=server.ca_file)
    )
    assert "Renewal cancelled" in caplog.text

    print(f"connections closed at token expiry: redis-entraid {theirs}, ours {ours}")
    assert ours == 0
    assert theirs >= shards  # each shard's idle connection, at its token's expiry
