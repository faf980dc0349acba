"""Redis cache with Entra ID vs a password-authenticated pool: same redis-server, same enforcer, same run.

    python benchmarks/redis.py [--seconds N] [--redis-policy single|none|oss|enterprise]

1. Operations/s (set + get) through django-redis with our EntraConnectionFactory vs django-redis's stock
   factory with an ACL user's password, both over TLS through the enforcer, in short alternating blocks
   (ABBA), reported as the median of the paired ratios; then both straight to redis-server (loopback, no
   TLS, no proxy), where client-side costs show more; then what our connection class adds per command.
2. Failed operations and connections the enforcer closed while 8 threads load each backend across three
   token rotations (6 s tokens).

``--redis-policy`` runs it on an Azure Managed Redis stand-in instead (docs/azure-behaviour.md): django-redis
with our factory and client class against stock django-redis with an ACL password (Non-clustered,
Enterprise); on OSS, where no stock Django cache works, ``redis_client()`` against redis-py's
``RedisCluster`` with the password. No direct (no TLS) figures there.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import threading
import time
from pathlib import Path

# Run as a script, Python puts benchmarks/ first on sys.path, where redis.py would shadow the redis package.
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import django
from django.conf import settings

from django_azure_mi.testing.imds import IMDSEmulator
from django_azure_mi.testing.redis import POLICIES, REDIS_RESOURCE, redis_stand_in


def ops_per_second(cache, seconds: float) -> float:
    n = 0
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        cache.set("bench", n)
        cache.get("bench")
        n += 2
    return n / seconds


def throughput(caches, rounds: int, block: float, suffix: str = "", label: str = "") -> None:
    """Short blocks of ours and stock, alternating (ABBA), each pair giving one ratio; the median of the
    ratios (and their quartiles) is the figure: a noisy machine moves both halves of a pair alike."""
    ratios: list[float] = []
    for i in range(rounds):
        order = ("entra", "password") if i % 2 == 0 else ("password", "entra")
        result = {alias: ops_per_second(caches[alias + suffix], block) for alias in order}
        ratios.append(result["entra"] / result["password"])
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    name = "ops/s ratio, 1 thread (set+get)" + label
    print(
        f"{name:<44} median of {rounds} paired ratios={median:.3f}  (quartiles {q1:.3f}-{q3:.3f})  "
        "goal: >= 0.97",
        flush=True,
    )


def per_command_cost(rounds: int = 200_000) -> float:
    """What our connection class adds to each command (the re-AUTH due check in send_packed_command),
    measured on a stub connection whose own send does nothing, against the stub alone."""
    from django_azure_mi.cache.connection import EntraConnectionMixin

    class Stub:
        def send_packed_command(self, command, check_health=True):
            return None

    class Ours(EntraConnectionMixin, Stub):
        pass

    ours, stub = object.__new__(Ours), Stub()
    timings = {}
    for name, conn in (("stub", stub), ("ours", ours), ("stub", stub), ("ours", ours)):
        send = conn.send_packed_command
        started = time.perf_counter()
        for _ in range(rounds):
            send(b"*1\r\n$4\r\nPING\r\n")
        timings.setdefault(name, []).append((time.perf_counter() - started) / rounds)
    added = min(timings["ours"]) - min(timings["stub"])
    name = "our per-command check (send_packed_command)"
    print(f"{name:<44} +{added * 1e9:.0f} ns per command", flush=True)
    return added


def rotations(server, imds, caches, alias: str, rotations: int = 3) -> None:
    server.reset_counters()
    cache = caches[alias]
    start_tokens = imds.issued_count(REDIS_RESOURCE)
    stop = threading.Event()
    counts = {"ops": 0, "failed": 0}
    lock = threading.Lock()

    def work(i: int) -> None:
        ops = failed = 0
        while not stop.is_set():
            try:
                cache.set(f"k{i}", i)
                cache.get(f"k{i}")
                ops += 2
            except Exception:
                failed += 1
            time.sleep(0.001)
        with lock:
            counts["ops"] += ops
            counts["failed"] += failed

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while imds.issued_count(REDIS_RESOURCE) < start_tokens + rotations + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join()
    print(
        f"{'rotations x3, 8 threads: ' + alias:<40} ops={counts['ops']}  failed={counts['failed']}  "
        f"closed by enforcer={server.closed_connections}  goal: 0 / 0",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=0.25, help="length of one throughput block")
    parser.add_argument("--rounds", type=int, default=40, help="blocks of each (ours, stock), alternating")
    parser.add_argument("--redis-policy", choices=POLICIES, default="single")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    with IMDSEmulator(ttl=6) as imds, imds.patched_environ(), redis_stand_in(args.redis_policy) as server:
        server.add_identity(imds.object_id())
        server.attach(imds)
        for admin in server.admins():  # every node of a cluster
            admin.execute_command("ACL", "SETUSER", "bench", "on", ">bench-password", "~*", "&*", "+@all")
        if args.redis_policy != "single":
            amr(server, imds, args)
            return
        pool_kwargs = {"ssl_ca_certs": server.ca_file}
        settings.configure(
            INSTALLED_APPS=["django_azure_mi"],
            CACHES={
                "entra": {
                    "BACKEND": "django_redis.cache.RedisCache",
                    "LOCATION": server.url,
                    "OPTIONS": {
                        "CONNECTION_FACTORY": "django_azure_mi.cache.EntraConnectionFactory",
                        "CONNECTION_POOL_KWARGS": pool_kwargs,
                    },
                },
                "password": {
                    "BACKEND": "django_redis.cache.RedisCache",
                    "LOCATION": server.url,
                    "OPTIONS": {
                        "USERNAME": "bench",
                        "PASSWORD": "bench-password",
                        "CONNECTION_POOL_KWARGS": pool_kwargs,
                    },
                },
                "entra_direct": {
                    "BACKEND": "django_redis.cache.RedisCache",
                    "LOCATION": f"redis://127.0.0.1:{server.redis_port}/0",
                    "OPTIONS": {"CONNECTION_FACTORY": "django_azure_mi.cache.EntraConnectionFactory"},
                },
                "password_direct": {
                    "BACKEND": "django_redis.cache.RedisCache",
                    "LOCATION": f"redis://127.0.0.1:{server.redis_port}/0",
                    "OPTIONS": {"USERNAME": "bench", "PASSWORD": "bench-password"},
                },
                "builtin": {
                    "BACKEND": "django_azure_mi.cache.RedisCache",
                    "LOCATION": server.url,
                    "OPTIONS": {"ssl_ca_certs": server.ca_file},
                },
            },
        )
        django.setup()
        from django.core.cache import caches

        for alias in ("entra", "password", "entra_direct", "password_direct", "builtin"):
            caches[alias].set("warm", 1)
        throughput(caches, args.rounds, args.seconds, label=" via enforcer+TLS")
        throughput(caches, args.rounds, args.seconds, "_direct", label=" direct")
        added = per_command_cost()
        per_op = 1 / ops_per_second(caches["password_direct"], 1.0)
        print(
            f"{'  share of one direct command':<44} {added / per_op * 100:.2f} % of {per_op * 1e6:.1f} us",
            flush=True,
        )
        rotations(server, imds, caches, "entra")
        rotations(server, imds, caches, "builtin")


def amr(server, imds, args) -> None:
    """The figures on an Azure Managed Redis policy (see the module docstring)."""
    import redis

    ours = server.cache_settings("django-redis")  # our factory and client class, CLUSTER "auto"
    stock = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": server.url,
        "OPTIONS": {
            "USERNAME": "bench",
            "PASSWORD": "bench-password",
            "CONNECTION_POOL_KWARGS": {"ssl_ca_certs": server.ca_file},
        },
    }
    settings.configure(
        INSTALLED_APPS=["django_azure_mi"],
        CACHES={"entra": ours, "password": stock, "builtin": server.cache_settings("builtin")},
    )
    django.setup()
    from django.core.cache import caches

    from django_azure_mi.cache import redis_client

    if server.policy == "oss":  # no stock Django cache works here: redis-py's cluster client, each way
        clients = {
            "entra": redis_client(url=server.url, ssl_ca_certs=server.ca_file, cluster="auto"),
            "password": redis.RedisCluster.from_url(
                server.url, username="bench", password="bench-password", ssl_ca_certs=server.ca_file
            ),
        }
        label = " RedisCluster"
    else:
        clients = {alias: caches[alias] for alias in ("entra", "password")}
        label = " django-redis"
    for client in clients.values():
        client.set("warm", 1)
    throughput(clients, args.rounds, args.seconds, label=f"{label} on {server.policy}")
    rotations(server, imds, caches, "entra")
    rotations(server, imds, caches, "builtin")


if __name__ == "__main__":
    main()
