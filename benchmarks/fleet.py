"""A fleet's cold start and steady state: gunicorn with N workers (no --preload: every worker starts cold)
serving the fleet site (tests/fleet_site) on the stand-ins, with Azure's identity-endpoint limits on.

    python benchmarks/fleet.py [--workers 4 16] [--seconds 20]

For N = 4 and 16 workers, without and with TOKEN_CACHE_DIR (and with WARM_UP for N = 4), it prints:
identity requests (and per renewal once running), the 429s the endpoint answered, the time until every
worker has answered and the latency of each worker's first request, p50/p99 latency under a bounded load
(8 clients) across token renewals, and the client errors.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

# Run as a script, Python puts benchmarks/ first on sys.path, where redis.py would shadow the redis package.
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent), str(HERE.parent / "tests" / "fleet_site")] + [
    p for p in sys.path if Path(p or ".").resolve() != HERE
]

from harness import SCOPES, Server, first_answers, load, migrate, site_env

from django_azure_mi.testing.imds import IMDSEmulator
from django_azure_mi.testing.postgres import PostgresStandIn, free_port
from django_azure_mi.testing.redis import RedisStandIn

TTL = 20.0


def run(workers: int, identity: dict, label: str, seconds: float, imds, pg, redis, tmp: Path) -> None:
    env = site_env(imds, pg, redis, identity)
    requests_before = {name: imds.request_count(r) for name, r in SCOPES.items()}
    throttled_before = imds.throttled
    site = Server("gunicorn", free_port(), workers, env, tmp / f"{label}.log", preload=False)
    try:
        firsts = first_answers(site.url, workers, site.started)
        cold = {name: imds.request_count(r) - requests_before[name] for name, r in SCOPES.items()}
        throttled = imds.throttled - throttled_before
        steady_before = {name: imds.request_count(r) for name, r in SCOPES.items()}
        outcomes, latencies = load(site.url, seconds)
        steady = {name: imds.request_count(r) - steady_before[name] for name, r in SCOPES.items()}
    finally:
        site.stop()
    served = sorted(at for at, _ in firsts.values()) or [float("nan")]
    first = sorted(took * 1000 for _, took in firsts.values()) or [float("nan")]
    quantiles = [q * 1000 for q in statistics.quantiles(latencies, n=100)]
    renewals = seconds / (TTL / 2)
    errors = sum(count for status, count in outcomes.items() if status != "200")
    parts = [
        f"{label:<30} answered {len(firsts)}/{workers}, all by {served[-1]:5.2f}s",
        f"first request p50 {statistics.median(first):6.0f} ms, max {first[-1]:6.0f} ms",
        f"cold identity requests {sum(cold.values())} ({throttled} x 429)",
        f"then {sum(steady.values()) / renewals:4.1f} per renewal ({len(SCOPES)} scopes)",
        f"load p50 {quantiles[49]:5.1f} ms, p99 {quantiles[98]:6.1f} ms",
        f"{sum(outcomes.values())} requests, {errors} errors",
    ]
    print("; ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="*", default=[4, 16])
    parser.add_argument("--seconds", type=float, default=TTL, help="length of the load after the cold start")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    with IMDSEmulator(ttl=TTL) as imds, PostgresStandIn() as pg, RedisStandIn() as redis:
        pg.add_role("app-identity")
        pg.attach(imds)
        redis.add_identity(imds.object_id())
        redis.attach(imds)
        migrate(site_env(imds, pg, redis))
        print(
            f"gunicorn, no --preload; identity endpoint limited to 5 at once and 20/s; tokens live {TTL:g} s"
        )
        for n in args.workers:
            for cache in (False, True):
                identity = {"TOKEN_CACHE_DIR": str(tmp / f"tokens-{n}")} if cache else {}
                label = f"N={n}" + (" TOKEN_CACHE_DIR" if cache else "")
                run(n, identity, label, args.seconds, imds, pg, redis, tmp)
        n = min(args.workers)
        for mode in ("tokens", True):
            run(n, {"WARM_UP": mode}, f"N={n} WARM_UP={mode!r}", args.seconds, imds, pg, redis, tmp)


if __name__ == "__main__":
    main()
