"""``python -m django_azure_mi.testing``: local Azure stand-ins until SIGINT/SIGTERM (see :mod:`.local`)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from types import FrameType

from .base import Missing
from .local import OPTIONAL_SERVICES, SERVICES, LocalAzure, add_redis_policy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m django_azure_mi.testing",
        description="Start local Azure stand-ins (identity endpoint, Postgres, Redis, Blob Storage, Key "
        "Vault; MySQL when asked for), print the environment that points settings.py at them, and serve "
        "until SIGINT/SIGTERM.",
    )
    parser.add_argument(
        "--services",
        default=",".join(SERVICES),
        help=f"comma-separated, from {', '.join(SERVICES + OPTIONAL_SERVICES)} (default: "
        f"{', '.join(SERVICES)}; the identity endpoint always runs)",
    )
    parser.add_argument("--no-storage", action="store_true", help="leave Blob Storage (Azurite) out")
    parser.add_argument(
        "--client-id",
        action="append",
        default=[],
        help="a user-assigned identity of the host, with access to every stand-in (repeatable; the first "
        "is the site's: AZURE_CLIENT_ID). Other client ids get Azure's 400 \"Identity not found\".",
    )
    parser.add_argument(
        "--env-file", help="also write the variables to this .env file (python-dotenv, `set -a; . FILE`)"
    )
    add_redis_policy(parser)
    parser.add_argument("--ttl", type=float, default=3600, help="token lifetime in seconds (default 3600)")
    args = parser.parse_args(argv)
    services = tuple(s.strip() for s in args.services.split(",") if s.strip())
    if args.no_storage:
        services = tuple(s for s in services if s != "storage")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    with contextlib.ExitStack() as stack:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: the terminal closed
            stack.callback(signal.signal, signum, signal.signal(signum, on_signal))
        try:
            local = stack.enter_context(
                LocalAzure(
                    services, ttl=args.ttl, redis_policy=args.redis_policy, client_ids=tuple(args.client_id)
                )
            )
        except Missing as exc:  # one line that says what to install, no traceback
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.env_file:
            with open(args.env_file, "w") as fh:
                fh.write(local.dotenv())
        sys.stdout.write(local.exports())
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
