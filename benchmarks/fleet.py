"""A fleet's cold start and steady state: gunicorn with N workers (no --preload: every worker starts cold)
serving the fleet site (tests/fleet_site) on the stand-ins, with Azure's identity-endpoint limits on.

    python benchmarks/fleet.py [--workers 4 16] [--seconds 20]

For N = 4 and 16 workers, without and with TOKEN_CACHE_DIR (and with WARM_UP for N = 4), it prints:
identity requests (and per renewal once running), the 429s the endpoint answered, the time until every
worker has answered and the latency of each worker's first request, p50/p99 latency under a bounded load
(8 clients) in steady state and around token rotations (requests sent from 0.5 s before to 1 s after a
worker was issued a token), and the client errors (cold start and load).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, Python puts benchmarks/ first on sys.path, where redis.py would shadow the redis package.
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent), str(HERE.parent / "tests" / "fleet_site")] + [
    p for p in sys.path if Path(p or ".").resolve() != HERE
]

from harness import SCOPES, Load, Server, first_answers, migrate, site_env, stand_ins

from django_azure_mi.testing.net import free_port

TTL = 20.0


def quantile_ms(latencies: list[float], q: int) -> float:
    if len(latencies) < 2:
        return float("nan")
    return statistics.quantiles(latencies, n=100)[q - 1] * 1000


def run(workers: int, identity: dict, label: str, seconds: float, imds, pg, redis, tmp: Path) -> None:
    env = site_env(imds, pg, redis, identity)
    requests_before = {name: imds.request_count(r) for name, r in SCOPES.items()}
    throttled_before = imds.throttled
    site = Server("gunicorn", free_port(), workers, env, tmp / f"{label}.log", preload=False)
    issued: list[float] = []  # when a token was issued during the load (time.monotonic())
    unsubscribe = imds.on_token(lambda _: issued.append(time.monotonic()))
    try:
        firsts, failures = first_answers(site.url, workers, site.started)
        cold = {name: imds.request_count(r) - requests_before[name] for name, r in SCOPES.items()}
        throttled = imds.throttled - throttled_before
        steady_before = {name: imds.request_count(r) for name, r in SCOPES.items()}
        issued.clear()
        running = Load(site.url, pause=0.01)  # flat out: the benchmark measures throughput
        time.sleep(seconds)
        done = running.stop()
        steady = {name: imds.request_count(r) - steady_before[name] for name, r in SCOPES.items()}
    finally:
        unsubscribe()
        site.stop()
    served = sorted(at for at, _ in firsts.values()) or [float("nan")]
    first = sorted(took * 1000 for _, took in firsts.values()) or [float("nan")]
    # "around a rotation": sent from 0.5 s before to 1 s after a token was issued to some worker
    near = [r.took for r in done if any(at - 0.5 <= r.sent <= at + 1.0 for at in issued)]
    away = [r.took for r in done if not any(at - 0.5 <= r.sent <= at + 1.0 for at in issued)]
    renewals = seconds / (TTL / 2)
    errors = sum(not r.ok for r in done) + sum(failures.values())
    parts = [
        f"{label:<30} answered {len(firsts)}/{workers}, all by {served[-1]:5.2f}s",
        f"first request p50 {statistics.median(first):6.0f} ms, max {first[-1]:6.0f} ms",
        f"cold identity requests {sum(cold.values())} ({throttled} x 429)",
        f"then {sum(steady.values()) / renewals:4.1f} per renewal ({len(SCOPES)} scopes)",
        f"load p50/p99 steady {quantile_ms(away, 50):5.1f}/{quantile_ms(away, 99):5.1f} ms"
        f" ({len(away)}), around rotations {quantile_ms(near, 50):5.1f}/{quantile_ms(near, 99):5.1f} ms"
        f" ({len(near)})",
        f"{len(done)} requests, {errors} errors",
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
    with stand_ins(TTL) as (imds, pg, redis):
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
