"""Postgres backend with managed identity vs Django's backend with a password: same cluster, same run.

    python benchmarks/postgres.py [--rounds N]

Both aliases connect over TLS to one token-checking Postgres stand-in, through its sign-in gateway
(TLS, then a cleartext password inside it, as on Azure); one signs in with the managed identity's token
(our ENGINE; the gateway checks the token's signature and claims), the other with a plain password of the
same length (Django's ENGINE). A last line measures the stand-in itself: a sign-in through the gateway
against Postgres's own TLS and password authentication on the same cluster (``direct``), i.e. the latency
the gateway adds. Runs are interleaved so that drift hits both. Prints the median per operation and the
ratio ours / anchor.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

# Run as a script, Python puts benchmarks/ first on sys.path, where redis.py would shadow the redis package.
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import django
from django.conf import settings

from django_azure_mi.testing.imds import IMDSEmulator
from django_azure_mi.testing.postgres import PostgresStandIn

ROLE = "app-identity"


def compare(
    name: str, ours_fn, anchor_fn, rounds: int, per_round: int, goal: str, anchor: str = "password"
) -> None:
    """Alternate ours and the anchor op by op in ABBA order (drift and order effects hit both alike);
    compare medians."""
    samples: dict[bool, list[float]] = {True: [], False: []}
    clock = time.perf_counter
    for i in range(rounds * per_round):
        for is_ours in (True, False) if i % 2 == 0 else (False, True):
            fn = ours_fn if is_ours else anchor_fn
            start = clock()
            fn()
            samples[is_ours].append(clock() - start)
    o, a = statistics.median(samples[True]), statistics.median(samples[False])
    print(
        f"{name:<34} ours={o * 1e6:9.1f}us  {anchor}={a * 1e6:9.1f}us  ratio={o / a:.3f}  goal: {goal}",
        flush=True,
    )


def connect(alias: str):
    """One new physical connection of ``alias``, opened and closed (the operation the benchmarks time)."""
    from django.db import connections

    def run() -> None:
        conn = connections[alias]
        conn.connect()
        conn.close()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with IMDSEmulator(ttl=3600) as imds, imds.patched_environ(), PostgresStandIn(direct=True) as pg:
        pg.add_role(ROLE)
        pg.attach(imds)
        token_length = len(imds.mint("https://ossrdbms-aad.database.windows.net").token)
        passwords = {"long_password": "p" * token_length, "short_password": "a-20-char-password!!"}
        databases = {"default": pg.database_settings(ROLE)}
        for role, secret in passwords.items():
            pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'")  # for the direct port
            pg.execute(f"GRANT ALL ON DATABASE {pg.dbname} TO {role}")
            pg.set_password(role, secret)  # for the gateway
            databases[role] = {
                **pg.database_settings(role, PASSWORD=secret),
                "ENGINE": "django.db.backends.postgresql",
            }
        short = databases["short_password"]
        databases["direct_password"] = {**short, "PORT": pg.direct_port}
        pool = {"pool": {"min_size": 2, "max_size": 2}}
        databases["pooled"] = pg.database_settings(ROLE, OPTIONS=pool)
        long = databases["long_password"]
        databases["pooled_password"] = {**long, "OPTIONS": {**long["OPTIONS"], **pool}}
        settings.configure(INSTALLED_APPS=["django_azure_mi"], DATABASES=databases)
        django.setup()
        from django.db import connections

        for alias in connections:
            connect(alias)()  # warm: token cached, pools opened
        compare(
            "new connection (TLS + password)",
            connect("default"),
            connect("long_password"),
            args.rounds,
            10,
            "<= 1.05",
        )
        compare(
            "stand-in: gateway vs Postgres's own",
            connect("short_password"),
            connect("direct_password"),
            args.rounds,
            10,
            "(for information: what the gateway adds)",
        )
        compare(
            "pool checkout + return",
            connect("pooled"),
            connect("pooled_password"),
            args.rounds,
            200,
            "<= 1.02",
        )
        print(f"IMDS requests during the run: {imds.request_count()}")
        for alias in connections:
            if connections[alias].pool:
                connections[alias].close_pool()


if __name__ == "__main__":
    main()
