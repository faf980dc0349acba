"""Django Channels' Redis layer with Entra ID vs channels_redis with an ACL password: same redis-server, same
enforcer, same run.

    python benchmarks/channels.py [--rounds N] [--messages N] [--layer core|pubsub] [--ttl S]

In one event loop, a receiver waits on a new channel while a sender sends ``--messages`` messages (each
stamped with its send time), one block per layer, alternating (ABBA). Each pair of blocks gives a
throughput ratio (messages/s, ours / stock) and a p99 latency ratio (send to receive); the medians of the
paired ratios are the figures (goals: throughput >= 0.95, p99 <= 1.1). Tokens live ``--ttl`` seconds, so
the run spans several rotations; connections the enforcer closed at expiry are counted (goal 0).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import django
from django.conf import settings

from django_azure_mi.testing.imds import IMDSEmulator
from django_azure_mi.testing.redis import REDIS_RESOURCE, redis_stand_in


async def block(layer, messages: int) -> tuple[float, list[float]]:
    """(messages/s, latencies in seconds) of ``messages`` sent to a new channel and received."""
    channel = await layer.new_channel()
    latencies: list[float] = []

    async def receive() -> None:
        for _ in range(messages):
            message = await layer.receive(channel)
            latencies.append(time.perf_counter() - message["sent"])

    receiver = asyncio.create_task(receive())
    await asyncio.sleep(0.01)  # the receiver is waiting (BZPOPMIN, or subscribed)
    started = time.perf_counter()
    for n in range(messages):
        await layer.send(channel, {"type": "bench.message", "n": n, "sent": time.perf_counter()})
    await asyncio.wait_for(receiver, 60)
    return messages / (time.perf_counter() - started), latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def compare(layers: dict, rounds: int, messages: int) -> tuple[list[float], list[float], dict]:
    throughput, tail, seen = [], [], {"ours": [], "stock": []}
    for i in range(rounds):
        order = ("ours", "stock") if i % 2 == 0 else ("stock", "ours")
        result = {name: await block(layers[name], messages) for name in order}
        throughput.append(result["ours"][0] / result["stock"][0])
        tail.append(p99(result["ours"][1]) / p99(result["stock"][1]))
        for name in seen:
            seen[name].append(result[name])
    return throughput, tail, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20, help="blocks of each layer, alternating")
    parser.add_argument("--messages", type=int, default=500, help="messages per block")
    parser.add_argument("--layer", choices=("core", "pubsub"), default="core")
    parser.add_argument("--ttl", type=float, default=10.0, help="token lifetime (s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    settings.configure(INSTALLED_APPS=["django_azure_mi"])
    django.setup()
    from channels_redis.core import RedisChannelLayer as StockCore
    from channels_redis.pubsub import RedisPubSubChannelLayer as StockPubSub

    from django_azure_mi.channels import RedisChannelLayer, RedisPubSubChannelLayer

    with IMDSEmulator(ttl=args.ttl) as imds, imds.patched_environ(), redis_stand_in("single") as server:
        server.add_identity(imds.object_id())
        server.attach(imds)
        server.admin().execute_command(
            "ACL", "SETUSER", "bench", "on", ">bench-password", "~*", "&*", "+@all"
        )
        url = server.url
        password_url = url.replace("://", "://bench:bench-password@")
        ours_cls, stock_cls = (
            (RedisChannelLayer, StockCore) if args.layer == "core" else (RedisPubSubChannelLayer, StockPubSub)
        )
        options = {"capacity": args.messages * 2} if args.layer == "core" else {}
        layers = {
            "ours": ours_cls(hosts=[{"address": url, "ssl_ca_certs": server.ca_file}], **options),
            "stock": stock_cls(hosts=[{"address": password_url, "ssl_ca_certs": server.ca_file}], **options),
        }
        tokens = imds.issued_count(REDIS_RESOURCE)
        started = time.monotonic()
        throughput, tail, seen = asyncio.run(compare(layers, args.rounds, args.messages))
        elapsed = time.monotonic() - started
        rotations = imds.issued_count(REDIS_RESOURCE) - tokens
    per_second = {name: statistics.median(r[0] for r in runs) for name, runs in seen.items()}
    latencies = {name: [x for r in runs for x in r[1]] for name, runs in seen.items()}
    print(f"Channels {args.layer} layer, {args.rounds} ABBA blocks of {args.messages} messages each, "
          f"{elapsed:.0f} s, {rotations} tokens issued (ttl {args.ttl:g} s)")  # fmt: skip
    for name in ("ours", "stock"):
        values = latencies[name]
        print(f"  {name:<6} {per_second[name]:7.0f} msg/s  latency p50 "
              f"{statistics.median(values) * 1e3:.2f} ms  p99 {p99(values) * 1e3:.2f} ms")  # fmt: skip
    print(
        f"  throughput ours/stock: median of paired ratios {statistics.median(throughput):.3f}  goal >= 0.95"
    )
    print(f"  p99 latency ours/stock: median of paired ratios {statistics.median(tail):.3f}  goal <= 1.1")
    print(f"  connections closed at token expiry: {server.closed_connections}  goal 0")


if __name__ == "__main__":
    main()
