"""Azure Managed Redis stand-ins behave toward clients as AMR does (docs/azure-behaviour.md): on the OSS
clustering policy the entry endpoint answers MOVED, every shard signs connections in with the identity's
tokens on its own and closes them at expiry unless re-AUTHed, and a slot can move under a client."""

from __future__ import annotations

import time

import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import AuthenticationError, MovedError, ResponseError

from django_azure_mi import get_token_provider
from django_azure_mi.testing.clock import EndpointCredential, FakeClock, on_fake_clock, wait_for

REDIS = "https://redis.azure.com/.default"


def token_client(server, oid: str, token: str, *, cluster: bool = True):
    cls = redis.RedisCluster if cluster else redis.Redis
    return cls.from_url(server.url, ssl_ca_certs=server.ca_file, username=oid, password=token)


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


def test_a_cluster_client_reauths_idle_connections_on_every_node_through_topology_changes(
    azure_redis_cluster, azure_imds, settings
):
    """Every node's pool is an Entra pool registered with the identity's sweeper: idle connections on
    every shard live through two token lifetimes (on a fake clock), also after a slot moved and the
    client refreshed its topology - the refresh after which redis-entraid's single on_next callback
    re-AUTHs no node at all."""
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


@pytest.fixture(params=["none", "oss", "enterprise"])
def amr(request):
    """Azure Managed Redis on each clustering policy (non-clustered: the single-node stand-in)."""
    fixture = {"none": "azure_redis", "oss": "azure_redis_cluster", "enterprise": "azure_redis_enterprise"}
    return request.getfixturevalue(fixture[request.param])


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
