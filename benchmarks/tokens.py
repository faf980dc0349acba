"""Token core vs raw azure-identity ManagedIdentityCredential, same IMDS emulator, same run.

    python benchmarks/tokens.py            # all four measurements (~1 minute; the raw 500 case takes ~25 s)
    python benchmarks/tokens.py --quick    # skip the slow raw-500 anchor

Prints one line per measurement with our number, the anchor's, and the goal.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as a script, Python puts benchmarks/ first on sys.path, where redis.py would shadow the redis package.
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import django
from django.conf import settings

settings.configure(INSTALLED_APPS=["django_azure_mi"], AZURE_MANAGED_IDENTITY={})
django.setup()

from azure.identity import ManagedIdentityCredential

from django_azure_mi import get_token_provider
from django_azure_mi.testing import reset_state
from django_azure_mi.testing.imds import Fault, IMDSEmulator

SCOPE = "https://storage.azure.com/.default"


def report(name: str, ours: str, anchor: str, result: str, goal: str) -> None:
    print(f"{name:<44} ours={ours:<14} azure-identity={anchor:<14} {result:<18} goal: {goal}", flush=True)


def per_call_us(fn: Callable[[], Any], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


def cached_lookup() -> None:
    with IMDSEmulator(ttl=3600) as imds, imds.patched_environ():
        reset_state()
        provider = get_token_provider(SCOPE)
        raw = ManagedIdentityCredential()
        provider.get_token(SCOPE)
        raw.get_token(SCOPE)  # warm: azure-identity caches tokens with > 5 min left
        ours = per_call_us(lambda: provider.get_token(SCOPE), 20000)
        anchor = per_call_us(lambda: raw.get_token(SCOPE), 2000)
        assert imds.request_count() == 2, "a warm lookup went to the endpoint"
        report(
            "cached get_token (us/call)",
            f"{ours:.2f}",
            f"{anchor:.2f}",
            f"ratio={ours / anchor:.3f}",
            "<= 0.1",
        )
        # code that asks the runtime for its provider on every use (get_token_provider in a view, say)
        by_scope = per_call_us(lambda: get_token_provider(SCOPE).get_token(SCOPE), 20000)
        report(
            "get_token_provider + get_token (us/call)",
            f"{by_scope:.2f}",
            f"{anchor:.2f}",
            f"ratio={by_scope / anchor:.3f}",
            "<= 0.1",
        )


def burst(get: Callable[[], Any], n: int = 50) -> None:
    barrier = threading.Barrier(n)

    def work() -> None:
        barrier.wait()
        get()

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def cold_burst() -> None:
    counts = []
    for use_ours in (True, False):
        with IMDSEmulator(ttl=3600) as imds, imds.patched_environ():
            reset_state()
            imds.latency = 0.05  # a realistic IMDS round trip keeps the callers overlapping
            credential = get_token_provider(SCOPE) if use_ours else ManagedIdentityCredential()
            burst(functools.partial(credential.get_token, SCOPE))
            counts.append(imds.request_count())
    report("50-thread cold burst (IMDS requests)", str(counts[0]), str(counts[1]), "", "1 vs 50")


def callers(get: Callable[[], Any], seconds: float, threads: int = 4) -> list[float]:
    """Latencies (s) of continuous callers, 1 ms apart, for ``seconds``."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def work() -> None:
        mine = []
        while time.monotonic() < stop:
            start = time.perf_counter()
            with contextlib.suppress(Exception):  # the raw credential raises while IMDS fails: count its time
                get()
            mine.append(time.perf_counter() - start)
            time.sleep(0.001)
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return latencies


def slow_refresh(seconds: float = 15.0) -> None:
    # Ours: 8 s tokens (short enough that azure-identity's cache steps aside) refresh every ~4 s.
    with IMDSEmulator(ttl=8) as imds, imds.patched_environ():
        reset_state()
        provider = get_token_provider(SCOPE)
        provider.get_token(SCOPE)  # warm-up
        imds.latency = 0.3
        ours = callers(lambda: provider.get_token(SCOPE), seconds)
        ours_refreshes = imds.request_count() - 1
    # Raw: azure-identity refreshes once < 5 min remain; 303 s tokens make that every ~3 s.
    with IMDSEmulator(ttl=303) as imds, imds.patched_environ():
        raw = ManagedIdentityCredential()
        raw.get_token(SCOPE)
        imds.latency = 0.3
        anchor = callers(lambda: raw.get_token(SCOPE), seconds)
        raw_refreshes = imds.request_count() - 1
    slow_ours = sum(1 for x in ours if x > 0.005)
    slow_raw = sum(1 for x in anchor if x > 0.005)
    report(
        "refresh at 300 ms latency (callers > 5 ms)",
        f"{slow_ours}/{len(ours)}",
        f"{slow_raw}/{len(anchor)}",
        f"refreshes {ours_refreshes}/{raw_refreshes}",
        "0 (raw: >= 1 per refresh)",
    )
    print(f"{'':<44} ours p50={statistics.median(ours) * 1e6:.1f}us max={max(ours) * 1e3:.2f}ms", flush=True)


def failing_endpoint(seconds: float = 10.0, quick: bool = False) -> None:
    with IMDSEmulator(ttl=20) as imds, imds.patched_environ():
        reset_state()
        provider = get_token_provider(SCOPE)
        provider.get_token(SCOPE)
        imds.fail_always(Fault.error(500))
        provider.refresh()  # the worker starts failing and retrying at once
        ours = callers(lambda: provider.get_token(SCOPE), seconds)
        requests = imds.request_count() - 1
    anchor = "skipped"
    if not quick:
        with IMDSEmulator(ttl=302) as imds, imds.patched_environ():
            raw = ManagedIdentityCredential()
            raw.get_token(SCOPE)
            imds.fail_always(Fault.error(500))
            time.sleep(2.5)  # now < 5 min remain: azure-identity goes to IMDS on the caller's thread
            start = time.perf_counter()
            with contextlib.suppress(Exception):  # it raises although the cached token is still valid
                raw.get_token(SCOPE)
            anchor = f"{time.perf_counter() - start:.1f}s"
    report(
        "IMDS 500 while token valid (worst caller)",
        f"{max(ours) * 1e3:.2f}ms",
        anchor,
        f"500s answered {requests}",
        "< 5 ms (raw ~25 s)",
    )


def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)  # the failure runs log warnings by design
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="skip the ~25 s raw azure-identity 500 anchor")
    args = parser.parse_args()
    cached_lookup()
    cold_burst()
    slow_refresh()
    failing_endpoint(quick=args.quick)
    reset_state()


if __name__ == "__main__":
    main()
