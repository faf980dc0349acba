"""A fleet: real gunicorn (--preload, 4 workers, sync views) and real uvicorn (4 workers, an async view with
``await cache.aget/aset`` and the ORM through ``sync_to_async``) serving a small site (tests/fleet_site) on
the stand-ins under a bounded load on loopback, across at least three token rotations.

Pass: no non-2xx answer, no connection the Redis enforcer closed, no refused Postgres sign-in, and at most
one identity request per worker and scope per renewal (per host with ``TOKEN_CACHE_DIR``)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from django_azure_mi.testing.postgres import free_port

sys.path.insert(0, str(Path(__file__).parent / "fleet_site"))
from harness import SCOPES, Server, load, migrate, site_env, worker_stats

TTL = 15.0
WORKERS = 4


@pytest.mark.slow
@pytest.mark.azure_imds(ttl=TTL)
@pytest.mark.parametrize(
    ("server", "cache_dir"), [("gunicorn", False), ("gunicorn", True), ("uvicorn", False)],
    ids=["gunicorn", "gunicorn+TOKEN_CACHE_DIR", "uvicorn"],
)  # fmt: skip
def test_a_fleet_serves_through_three_rotations(
    server, cache_dir, azure_imds, azure_postgres, azure_redis, tmp_path
):
    identity = {"TOKEN_CACHE_DIR": str(tmp_path / "tokens")} if cache_dir else {}
    env = site_env(azure_imds, azure_postgres, azure_redis, identity)
    migrate(env)
    site = Server(server, free_port(), WORKERS, env, tmp_path / f"{server}.log")
    try:
        site.wait_ready(WORKERS)
        refusals = len(azure_postgres.refusals)
        closed = azure_redis.closed_connections
        before = {name: azure_imds.request_count(r) for name, r in SCOPES.items()}
        seconds = 3.2 * TTL  # at least three rotations of every worker's tokens
        outcomes, _ = load(site.url, TTL)  # warm: a token lifetime of load
        warm = worker_stats(site.process.pid)
        outcomes += load(site.url, seconds - TTL)[0]
        imds = {name: azure_imds.request_count(r) - before[name] for name, r in SCOPES.items()}
        rotated = worker_stats(site.process.pid)
    finally:
        output = site.stop()
    renewals = seconds / (TTL / 2)  # the core renews a token once half its life has passed
    print(f"{server}: {dict(outcomes)}; identity requests during the load: {imds}")
    print(f"  workers (threads, RSS kB) warm: {sorted(warm.values())}; after: {sorted(rotated.values())}")
    assert set(outcomes) == {"200"} and outcomes["200"] > 200, (outcomes, output[-3000:])
    assert azure_redis.closed_connections == closed, output[-3000:]
    assert azure_postgres.refusals[refusals:] == [], output[-3000:]
    # resources after two more lifetimes of load: the same workers, no more threads than when warm (fewer
    # when a token nobody asks for went idle), and no memory growth to speak of
    assert set(rotated) == set(warm), (warm, rotated)
    for pid, (threads, rss) in rotated.items():
        assert threads <= warm[pid][0], (pid, warm[pid], (threads, rss))
        # gunicorn's workers stay within 100 kB; uvicorn's settle over their first minute of load (+9 MB,
        # then flat: sampled every 12 s for 108 s), so the bound leaves room for that
        assert rss - warm[pid][1] < 16 * 1024, (pid, warm[pid], (threads, rss))
    per_renewal = 1 if cache_dir else WORKERS  # the cache dir: one request per host, scope and renewal
    for name, count in imds.items():
        assert count <= per_renewal * (math.ceil(renewals) + 1), (name, count)
