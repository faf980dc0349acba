"""Celery on Azure Managed Redis (docs/azure-behaviour.md): the broker transport and result backend on each
clustering policy, with priorities and chords (the multi-key commands a sharded Redis restricts), a slot
that moves under a running worker (OSS), and real worker processes through three token rotations.

Before this, a worker died at start-up on OSS (``Unrecoverable error: MovedError``) and on Enterprise
(``Unrecoverable error: ClusterCrossSlotError`` in kombu's queue size, BRPOP over the priority queues)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from celery import Celery
from redis.crc import key_slot

from django_azure_mi.cache.slots import DEFAULT_PREFIX, hash_tag, pinned_slot
from django_azure_mi.diagnostics import SettingError

from .conftest import AMR_POLICIES
from .test_celery import TTL, send, site_env, worker


def amr_env(server, imds, pg, **config: object) -> dict[str, str]:
    """The fleet site's environment with its cache, broker and results on ``server``."""
    env = site_env(imds, pg, server)
    settings = json.loads(env["FLEET_CONFIG"])
    settings.update(config, celery=server.celery_settings())
    env["FLEET_CONFIG"] = json.dumps(settings)
    return env


def all_answered(counts: dict[str, int]) -> None:
    assert counts["ok"] == counts["sent"] > 0 and counts["duplicates"] == 0, counts
    assert counts["chord"] == 380 and counts["priorities"] == 20 and counts["group"] == [1, 2, 3, 4, 5]


def test_a_worker_runs_priorities_groups_and_chords_on_every_policy(
    amr, azure_imds, azure_postgres, tmp_path
):
    running = worker(amr_env(amr, azure_imds, azure_postgres), "solo", tmp_path / "worker.log")
    try:
        counts = send(amr_env(amr, azure_imds, azure_postgres), 2)
    finally:
        output = running.stop()
    all_answered(counts)
    if amr.policy == "oss":  # every key of Celery's on the shard serving {celery}'s slot
        keys = amr._node_admin(amr.owner(key_slot(b"{celery}"))).keys("*")
    else:
        keys = amr.admin().keys("*")
    celery = [key for key in keys if not key.startswith(b":1:")]  # the cache's keys: ":1:runs:…"
    assert celery and all(key.startswith(DEFAULT_PREFIX.encode()) for key in celery), celery
    assert amr.closed_connections == 0 and "Traceback" not in output, output[-3000:]


def test_a_running_worker_follows_its_slot_to_another_shard(
    azure_redis_cluster, azure_imds, azure_postgres, tmp_path
):
    """A rebalance moves the slot of the ``{celery}`` hash tag, queues and results with it, while a worker
    runs tasks: its connections and the client's get MOVED, reconnect to the new shard, and every task
    runs and answers once."""
    server = azure_redis_cluster
    env = amr_env(server, azure_imds, azure_postgres, log_level="INFO")
    slot = key_slot(b"{celery}")
    before = server.owner(slot)
    running = worker(env, "solo", tmp_path / "worker.log")

    def rebalance() -> None:
        deadline = time.monotonic() + 60  # once the worker runs tasks (a loaded machine starts it slowly)
        while " received" not in running.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        server.move_slot(slot, to=(server.shard_nodes.index(before) + 1) % server.shards)

    mover = threading.Thread(target=rebalance)
    mover.start()
    try:
        counts = send(env, 10)
    finally:
        mover.join()
        output = running.stop()
    all_answered(counts)
    assert server.owner(slot) is not before
    assert f"hash slot {slot} moved to localhost:{server.owner(slot).port}" in output, output[-3000:]
    assert server.closed_connections == 0


def test_the_key_prefix_follows_the_host_and_refuses_one_without_a_hash_tag():
    where = "CELERY_BROKER_TRANSPORT_OPTIONS"
    amr = "rediss://app.westeurope.redis.azure.net:10000/0"
    acr = "rediss://app.redis.cache.windows.net:6380/0"
    assert pinned_slot({}, where, amr) == (DEFAULT_PREFIX, key_slot(b"{celery}"))
    assert pinned_slot({}, where, acr) == (None, None)  # Azure Cache for Redis: one server, as before
    assert pinned_slot({"cluster": "auto"}, where, acr)[0] == DEFAULT_PREFIX
    assert pinned_slot({"cluster": False}, where, amr) == (None, None)
    assert pinned_slot({"global_keyprefix": "{jobs}:"}, where, amr) == ("{jobs}:", key_slot(b"{jobs}"))
    with pytest.raises(SettingError, match=r"\['global_keyprefix'\] is 'celery:'.*no hash tag") as raised:
        pinned_slot({"global_keyprefix": "celery:"}, where, amr)
    assert raised.value.check_id == "E052" and "'{celery}:'" in str(raised.value)
    with pytest.raises(SettingError, match=r"\['cluster'\] is 'yes'") as raised:
        pinned_slot({"cluster": "yes"}, where, amr)
    assert raised.value.check_id == "E026"
    assert [hash_tag(p) for p in ("{a}:", "x{b}y", "{}:", "c:", "{d")] == ["a", "b", None, None, None]


def test_the_result_backend_keeps_its_keys_under_the_prefix(azure_redis_enterprise, azure_imds):
    app = Celery("amr_backend", set_as_current=False)
    app.conf.update(azure_redis_enterprise.celery_settings())
    backend = app.backend
    assert backend.get_key_for_task("t") == b"{celery}:celery-task-meta-t"
    assert backend.get_key_for_group("g", ".j") == b"{celery}:celery-taskset-meta-g.j"
    app = Celery("amr_backend", set_as_current=False)
    app.conf.update(azure_redis_enterprise.celery_settings())
    app.conf.result_backend_transport_options = {"cluster": "auto", "global_keyprefix": "{results}:"}
    assert app.backend.get_key_for_task("t") == b"{results}:celery-task-meta-t"  # once, not twice


@pytest.mark.slow
@pytest.mark.once
@pytest.mark.heavy
@pytest.mark.azure_imds(ttl=TTL)
@pytest.mark.parametrize(("policy", "pool"), [("oss", "prefork"), ("enterprise", "solo")])
def test_a_real_worker_runs_every_task_once_through_three_rotations_on_amr(
    policy, pool, request, azure_imds, azure_postgres, tmp_path
):
    """As tests/test_celery.py's worker test, on AMR (cache, broker and results on the same stand-in). On
    OSS the slot of the ``{celery}`` hash tag moves to another shard halfway."""
    server = request.getfixturevalue(AMR_POLICIES[policy])
    env = amr_env(server, azure_imds, azure_postgres)
    running = worker(env, pool, tmp_path / "worker.log")
    moved = threading.Event()
    if policy == "oss":
        slot = key_slot(b"{celery}")

        def rebalance() -> None:
            time.sleep(1.5 * TTL)
            server.move_slot(slot, to=(server.shard_nodes.index(server.owner(slot)) + 1) % server.shards)
            moved.set()

        threading.Thread(target=rebalance, daemon=True).start()
    try:
        counts = send(env, 3.2 * TTL, 1000)
    finally:
        output = running.stop()
    print(f"{policy}/{pool}: {counts}; closures {server.closures}; moved {moved.is_set()}")
    all_answered(counts)
    assert counts["sent"] >= 1000, counts
    assert server.closures == [], output[-3000:]
    assert moved.is_set() == (policy == "oss")
    assert "Traceback" not in output, output[-3000:]


def test_a_node_named_in_a_redirect_gets_the_tls_rule():
    """A token goes to each node a MOVED names only under the same TLS rule as the endpoint's."""
    import redis
    from redis.exceptions import MovedError

    from django_azure_mi.cache.slots import SlotPinnedPool
    from django_azure_mi.celery.transport import broker_settings

    pool = SlotPinnedPool(
        redis.Connection, slot=3213, entra_settings=broker_settings({}), host="127.0.0.1", port=6379
    )
    with pytest.raises(SettingError, match=r"cache\.example\.net would not use TLS") as raised:
        pool.route.redirected(MovedError("3213 cache.example.net:8501"))
    assert raised.value.check_id == "E022"
    moved = pool.route.redirected(MovedError("3213 localhost:8501"))
    assert isinstance(moved, redis.ConnectionError) and pool.route.address() == ("localhost", 8501)
    other = pool.route.redirected(MovedError("77 localhost:8502"))
    assert isinstance(other, redis.exceptions.ClusterCrossSlotError) and "slot 77" in str(other)
