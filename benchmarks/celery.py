"""Celery tasks/s through our transport and result backend (managed identity, 20 s tokens rotating during
the run) against stock Celery (kombu's Redis transport and Celery's Redis backend with an ACL user's
password), on the same redis-server behind the same TLS enforcer, in the same run.

    python benchmarks/celery.py [--rounds 10] [--tasks 200] [--redis-policy single|none|oss|enterprise]

One solo worker per configuration runs all along (each on its own Redis databases). A client process per
configuration sends ``--tasks`` tasks and fetches every result; the two clients take turns (ABBA rounds),
and the script prints the median of the per-pair ratios (ours / stock), then the closures the enforcer made
at token expiry and the lost and duplicated tasks over the whole run (goal: 0 / 0 / 0). It runs at least
``--rounds`` pairs and at least 3.2 token lifetimes.

On Azure Managed Redis (``--redis-policy``) both keep their keys under a hash tag in database 0 (ours
``{celery}:``, stock ``{stock}:`` through kombu's and Celery's ``global_keyprefix``); on OSS stock connects
straight to the node serving its tag's slot (which stock Celery cannot find by itself) with the password.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent), str(HERE.parent / "tests" / "fleet_site")] + [
    p for p in sys.path if Path(p or ".").resolve() != HERE
]

from harness import SITE, Process, site_env, stand_ins

from django_azure_mi.testing.redis import POLICIES, RedisStandIn

TTL = 20.0

CLIENT = """
import json, sys, time, uuid
import django, fleet_celery
django.setup()
for line in sys.stdin:
    count = int(line)
    started = time.perf_counter()
    results = [fleet_celery.record.delay(uuid.uuid4().hex) for _ in range(count)]
    runs = [r.get(timeout=120) for r in results]
    took = time.perf_counter() - started
    print(json.dumps({"took": took, "ok": len(runs), "duplicates": sum(r > 1 for r in runs)}), flush=True)
"""


def stock_settings(redis: RedisStandIn) -> dict[str, object]:
    """Stock Celery on the same server: kombu's transport and Celery's backend, ACL user ``admin``."""
    host, port = redis.host, redis.port
    if redis.policy == "oss":  # the node serving the slot of the {stock} hash tag
        from redis.crc import key_slot

        host, port = redis.announced_host, redis.owner(key_slot(b"{stock}")).port
    base = f"rediss://admin:{redis.admin_password}@{host}:{port}"
    tls = {"ssl_ca_certs": redis.ca_file, "ssl_cert_reqs": "required"}
    query = f"?ssl_cert_reqs=required&ssl_ca_certs={redis.ca_file}"
    if redis.policy == "single":
        return {"broker_url": f"{base}/2", "broker_use_ssl": tls, "result_backend": f"{base}/3{query}"}
    prefix = {"global_keyprefix": "{stock}:"}
    return {
        "broker_url": f"{base}/0",
        "broker_use_ssl": tls,
        "broker_transport_options": prefix,
        "result_backend": f"{base}/0{query}",
        "result_backend_transport_options": prefix,
    }


def environment(base: dict[str, str], celery: dict[str, object]) -> dict[str, str]:
    config = json.loads(base["FLEET_CONFIG"])
    config["celery"] = celery
    return {**base, "FLEET_CONFIG": json.dumps(config)}


class Client:
    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", CLIENT], env=env, cwd=SITE, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip

    def run(self, count: int) -> dict[str, float]:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(f"{count}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def stop(self) -> None:
        assert self.process.stdin
        self.process.stdin.close()
        self.process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10, help="pairs of rounds (ABBA)")
    parser.add_argument("--tasks", type=int, default=200, help="tasks per round")
    parser.add_argument("--redis-policy", choices=POLICIES, default="single")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="celery-bench-"))
    with stand_ins(TTL, args.redis_policy) as (imds, pg, redis):
        base = site_env(imds, pg, redis)
        envs = {
            "ours": environment(base, redis.celery_settings()),
            "stock": environment(base, stock_settings(redis)),
        }
        workers = {
            name: Process(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "fleet_celery",
                    "worker",
                    "--pool",
                    "solo",
                    "--loglevel",
                    "WARNING",
                ],
                env,
                tmp / f"worker-{name}.log",
            )
            for name, env in envs.items()
        }
        clients = {name: Client(env) for name, env in envs.items()}
        started = time.monotonic()
        try:
            for client in clients.values():
                client.run(20)  # warm: connections, tokens, imports
            ratios: list[float] = []
            rates: dict[str, list[float]] = {"ours": [], "stock": []}
            totals = {"ok": 0, "duplicates": 0, "sent": 0}
            pair = 0
            while pair < args.rounds or time.monotonic() - started < 3.2 * TTL:  # and 3 rotations at least
                order = ["ours", "stock"] if pair % 2 == 0 else ["stock", "ours"]
                took: dict[str, float] = {}
                for name in order:
                    answer = clients[name].run(args.tasks)
                    took[name] = answer["took"]
                    rates[name].append(args.tasks / answer["took"])
                    if name == "ours":
                        totals["sent"] += args.tasks
                        totals["ok"] += int(answer["ok"])
                        totals["duplicates"] += int(answer["duplicates"])
                ratios.append(took["stock"] / took["ours"])  # tasks/s ours / stock
                pair += 1
        finally:
            for client in clients.values():
                client.stop()
            for process in workers.values():
                process.stop()
        elapsed = time.monotonic() - started
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    print(f"Celery on {args.redis_policy}, solo worker, {args.tasks} tasks per round with results, "
          f"{len(ratios)} ABBA pairs, "
          f"{elapsed:.0f} s ({elapsed / TTL:.1f} token lifetimes of {TTL:g} s)")  # fmt: skip
    ours, stock = statistics.median(rates["ours"]), statistics.median(rates["stock"])
    spread = f"quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}"
    print(f"  tasks/s ours {ours:.0f}, stock {stock:.0f}; median of paired ratios "
          f"{statistics.median(ratios):.3f} ({spread}); goal >= 0.95")  # fmt: skip
    lost = totals["sent"] - totals["ok"]
    print(f"  ours over the run: {totals['sent']} tasks, closures at expiry {redis.closed_connections} "
          f"{redis.closures}, lost {lost}, duplicates {totals['duplicates']} (goal 0 / 0 / 0)")  # fmt: skip


if __name__ == "__main__":
    main()
