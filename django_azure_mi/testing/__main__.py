"""``python -m django_azure_mi.testing``: local Azure stand-ins until SIGINT/SIGTERM (see :mod:`.local`)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from .local import SERVICES, LocalAzure, add_redis_policy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m django_azure_mi.testing",
        description="Start local Azure stand-ins (identity endpoint, Postgres, Redis, Blob Storage, Key "
        "Vault), print the environment that points settings.py at them, and serve until SIGINT/SIGTERM.",
    )
    parser.add_argument(
        "--services",
        default=",".join(SERVICES),
        help=f"comma-separated, from {', '.join(SERVICES)} (default: all; the identity endpoint always runs)",
    )
    parser.add_argument("--env-file", help="also write the export lines to this file (for `set -a; . FILE`)")
    add_redis_policy(parser)
    parser.add_argument("--ttl", type=float, default=3600, help="token lifetime in seconds (default 3600)")
    args = parser.parse_args(argv)
    services = tuple(s.strip() for s in args.services.split(",") if s.strip())

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with LocalAzure(services, ttl=args.ttl, redis_policy=args.redis_policy) as local:
        exports = local.exports()
        if args.env_file:
            with open(args.env_file, "w") as fh:
                fh.write(exports)
        sys.stdout.write(exports)
        sys.stdout.flush()
        for line in local.lines:
            print(f"# {line}", file=sys.stderr)
        print("# ready: stop with Ctrl-C or SIGTERM", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
        print("# stopping", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
