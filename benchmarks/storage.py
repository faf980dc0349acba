"""AzureManagedIdentityStorage vs stock django-storages AzureStorage with a token credential: same Azurite.

    python benchmarks/storage.py

1. Warm ``url()`` with a user-delegation SAS (no network on either side: both hold a key).
2. User delegation key requests when 20 threads call ``url()`` on a cold storage, counted in Azurite's log.

Stock django-storages cannot address a path-style endpoint, so its anchor gets only that patched
(``_get_service_client`` pointed at Azurite); everything else is stock.
"""

from __future__ import annotations

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

from django_azure_mi.testing.azurite import AzuriteStandIn
from django_azure_mi.testing.imds import IMDSEmulator

SCOPE = "https://storage.azure.com/.default"


def per_call_us(fn, n: int = 2000, repeat: int = 7) -> float:
    best = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(best)


def burst(fn, n: int = 20) -> None:
    barrier = threading.Barrier(n)

    def work() -> None:
        barrier.wait()
        fn()

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    with IMDSEmulator() as imds, imds.patched_environ(), AzuriteStandIn() as azurite:
        settings.configure(INSTALLED_APPS=["django_azure_mi"])
        django.setup()
        from azure.storage.blob import BlobServiceClient
        from storages.backends.azure_storage import AzureStorage

        from django_azure_mi import get_token_provider
        from django_azure_mi.storage import AzureManagedIdentityStorage

        provider = get_token_provider(SCOPE)

        class StockOnAzurite(AzureStorage):
            def _get_service_client(self):
                return BlobServiceClient(
                    azurite.account_url, credential=self.token_credential, connection_verify=azurite.ca_file
                )

        def ours():
            return AzureManagedIdentityStorage(**azurite.storage_options("bench", expiration_secs=3600))

        def stock():
            return StockOnAzurite(
                account_name=azurite.account,
                azure_container="bench",
                token_credential=provider,
                expiration_secs=3600,
            )

        ours().client.create_container()

        # 2. cold bursts first (a fresh process-wide key cache for ours)
        before = azurite.settled_count()
        cold = ours()
        burst(lambda: cold.url("file.txt"))
        ours_requests = azurite.settled_count() - before
        anchor_requests = []
        for _ in range(5):
            before = azurite.settled_count()
            storage = stock()
            burst(lambda s=storage: s.url("file.txt"))
            anchor_requests.append(azurite.settled_count() - before)

        # 1. warm url()
        warm_ours, warm_stock = ours(), stock()
        warm_ours.url("a.txt")
        warm_stock.url("a.txt")
        ours_us = per_call_us(lambda: warm_ours.url("dir/some file.txt"))
        stock_us = per_call_us(lambda: warm_stock.url("dir/some file.txt"))
        print(
            f"{'warm url() with user-delegation SAS':<44} ours={ours_us:7.1f}us  stock={stock_us:7.1f}us  "
            f"ratio={ours_us / stock_us:.3f}  goal: <= 1.0",
            flush=True,
        )
        print(
            f"{'20-thread cold burst: delegation key requests':<44} ours={ours_requests}  "
            f"stock={'/'.join(map(str, anchor_requests))} (5 runs)  goal: 1 vs 2-7",
            flush=True,
        )


if __name__ == "__main__":
    main()
