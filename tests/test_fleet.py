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

from django_azure_mi.testing.net import free_port

sys.path.insert(0, str(Path(__file__).parent / "fleet_site"))
from harness import SCOPES, Server, first_answers, load, migrate, site_env, threads_of, worker_stats

TTL = 15.0
WORKERS = 4


@pytest.mark.slow
@pytest.mark.once
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
        names = threads_of(site.base_url, WORKERS)
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
    # by name: at most one renewal thread per token scope (none for a scope gone idle), one re-AUTH sweep
    for pid, threads in names.items():
        ours = [name for name in threads if name.startswith("django-azure-mi")]
        for scope in SCOPES.values():
            assert sum(scope in name for name in ours) <= 1, (pid, ours)
        assert all(
            name.startswith(("django-azure-mi token", "django-azure-mi redis re-auth")) for name in ours
        ), ours
    per_renewal = 1 if cache_dir else WORKERS  # the cache dir: one request per host, scope and renewal
    for name, count in imds.items():
        assert count <= per_renewal * (math.ceil(renewals) + 1), (name, count)


HERD = 16


@pytest.mark.slow
@pytest.mark.once
@pytest.mark.parametrize("cache_dir", [False, True], ids=["per-worker", "TOKEN_CACHE_DIR"])
def test_a_cold_herd_of_16_workers_under_the_identity_endpoints_limits(
    cache_dir, azure_imds, azure_postgres, azure_redis, tmp_path
):
    """gunicorn -w 16 without --preload: 16 processes start at once, each cold, against an identity endpoint
    that allows 5 requests at once and 20 a second (429 past that). No client sees an error, every worker
    answers within 60 s of the start; with TOKEN_CACHE_DIR the host makes one identity request per scope
    and draws no 429; without it the 429s stay below one per worker and scope (azure-identity retries
    them)."""
    assert azure_imds.limits
    identity = {"TOKEN_CACHE_DIR": str(tmp_path / "tokens")} if cache_dir else {}
    env = site_env(azure_imds, azure_postgres, azure_redis, identity)
    before = {name: azure_imds.request_count(r) for name, r in SCOPES.items()}
    throttled = azure_imds.throttled
    migrate(env)  # a deployment's migrate step on the same host (its Postgres token goes to the cache dir)
    site = Server("gunicorn", free_port(), HERD, env, tmp_path / "herd.log", preload=False)
    try:
        firsts, failures = first_answers(site.url, HERD, site.started, timeout=90)
    finally:
        output = site.stop()
    requests = {name: azure_imds.request_count(r) - before[name] for name, r in SCOPES.items()}
    throttled = azure_imds.throttled - throttled
    served = max((at for at, _ in firsts.values()), default=float("nan"))
    first = sorted(took for _, took in firsts.values())
    mode = "TOKEN_CACHE_DIR" if cache_dir else "per worker"
    print(f"herd of {HERD} ({mode}): all answered by {served:.2f} s, "
          f"first requests p50 {first[len(first) // 2]:.2f} s max {first[-1]:.2f} s; identity requests "
          f"{requests}, {throttled} x 429; failures {dict(failures)}")  # fmt: skip
    assert not failures, output[-3000:]
    assert len(firsts) == HERD and served < 60, (sorted(firsts.values()), output[-3000:])
    if cache_dir:
        assert all(count == 1 for count in requests.values()), requests
        assert throttled == 0
    else:
        assert throttled < HERD * len(SCOPES), throttled
        assert all(count <= 2 * HERD + 1 for count in requests.values()), requests
