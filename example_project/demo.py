#!/usr/bin/env python
"""`make demo`: the example site on local Azure stand-ins, no Azure subscription needed.

Starts the IMDS emulator (the app's managed identity), a token-checking Postgres, Redis with Entra-style
ACL users behind a TLS enforcer, Azurite with OAuth over HTTPS and a Key Vault stand-in; points the example
site's environment variables at them; migrates; runs `manage.py azure_check`; serves the site's ASGI
application with uvicorn and walks through it (upload, signed link, cache, database rows, the live chat over
websockets and the channel layer, status and health pages); then keeps the site running until Ctrl-C.
`--once` stops after the walkthrough (CI runs that), exiting non-zero if any step failed. `--mysql` adds
a token-checking MySQL (MariaDB's server needed) as the site's second database, which `azure_check` probes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def say(text: str) -> None:
    print(text, flush=True)


def step(number: int, text: str) -> None:
    say(f"\n\033[1m[{number}] {text}\033[0m" if sys.stdout.isatty() else f"\n[{number}] {text}")


class Failed(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise Failed(what)
    say(f"    ✓ {what}")


def serve(port: int, stack: contextlib.ExitStack) -> str:
    """The site's ASGI application (HTTP and websockets) on uvicorn in a thread; its base URL. ``port``
    taken, or 0: any free port."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config("demo_site.asgi:application", log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise Failed("uvicorn did not start")
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)
        sock.close()

    stack.callback(stop)
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def chat(base: str, when: str = "") -> None:
    """Two websockets on the live chat: what one sends reaches both, through the channel layer."""
    from websockets.sync.client import connect

    url = base.replace("http://", "ws://") + "/ws/chat/"
    text = f"hello over Channels {secrets.token_hex(4)}"
    with connect(url, origin=base, open_timeout=30) as alice, connect(url, origin=base) as bob:
        alice.send(json.dumps({"text": text}))
        got = [json.loads(ws.recv(timeout=30))["text"] for ws in (alice, bob)]
    what = "live chat: a websocket message reached both websockets through the channel layer"
    check(got == [text, text], f"{what} {when}".strip())


def start_stand_ins(stack: contextlib.ExitStack, redis_policy: str, mysql: bool = False) -> dict[str, str]:
    """The stand-ins, wired together, as ``python -m django_azure_mi.testing`` starts them."""
    from django_azure_mi.testing.local import SERVICES, LocalAzure

    services = (*SERVICES, "mysql") if mysql else SERVICES
    local = stack.enter_context(LocalAzure(services, redis_policy=redis_policy))
    for line in local.lines:
        say(f"    {line}")
    local.apply()
    os.environ.pop("DJANGO_SECRET_KEY", None)  # the demo's SECRET_KEY comes from the Key Vault stand-in
    env = {**local.env, "DJANGO_SETTINGS_MODULE": "demo_site.settings"}
    os.environ.update(env)
    return env


def walkthrough(base: str, ca_bundle: str) -> None:
    import requests
    from notes.models import Note

    session = requests.Session()
    step(5, "Walk through the site")
    first = session.get(base + "/", timeout=30)
    check(first.status_code == 200, "GET / answered 200 (rows from Postgres, counter from Redis)")
    second = session.get(base + "/", timeout=30)
    counts = [int(re.search(r'id="visits">(\d+)<', r.text).group(1)) for r in (first, second)]  # type: ignore[union-attr]
    check(counts[1] == counts[0] + 1, f"visit counter in Redis went {counts[0]} -> {counts[1]} (cache hit)")

    payload = b"hello from django-azure-mi\n" + secrets.token_bytes(16).hex().encode()
    token = session.cookies["csrftoken"]
    posted = session.post(
        base + "/",
        data={"text": "first note", "csrfmiddlewaretoken": token},
        files={"attachment": ("hello.txt", payload, "text/plain")},
        headers={"Referer": base + "/"},
        timeout=30,
    )
    check(posted.status_code == 200 and "first note" in posted.text, "uploaded a file: note saved")
    link = re.search(r'class="file" href="([^"]+)"', posted.text)
    check(link is not None, "the page shows a signed link to the blob")
    url = link.group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    say(f"    signed link: {url.split('?')[0]}?…&sig=<redacted>")
    fetched = requests.get(url, timeout=30, verify=ca_bundle)
    check(fetched.status_code == 200 and fetched.content == payload, "fetched the signed link: same bytes")
    anonymous = requests.get(url.split("?")[0], timeout=30, verify=ca_bundle)
    check(
        anonymous.status_code != 200, f"without the signature the blob is private ({anonymous.status_code})"
    )

    rows = list(Note.objects.values_list("id", "text", "attachment"))
    check(len(rows) >= 1, f"Postgres holds {len(rows)} note row(s): {rows[:3]}")

    chat(base)

    status = session.get(base + "/status", timeout=30)
    if status.status_code != 200 or ">healthy<" not in status.text:
        say(re.sub(r"<[^>]+>", " ", status.text)[-3000:])
    check(status.status_code == 200 and ">healthy<" in status.text, "GET /status: every connection healthy")
    ready = session.get(base + "/health/ready", timeout=30)
    check(ready.status_code == 200 and ready.json()["status"] == "ok", "GET /health/ready: 200")
    live = session.get(base + "/health/live", timeout=30)
    check(live.status_code == 200, "GET /health/live: 200")
    chat(base, "after the health probes")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    from django_azure_mi.testing.local import add_redis_policy

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--once", action="store_true", help="exit after the walkthrough (CI)")
    parser.add_argument("--port", type=int, default=8000, help="port for the site (default 8000, 0 = any)")
    parser.add_argument("--mysql", action="store_true", help="a MySQL database too (needs mariadb-server)")
    add_redis_policy(parser)
    args = parser.parse_args()
    # docker stop, IDE stop buttons and systemd send SIGTERM; a closed terminal SIGHUP: stop as on Ctrl-C,
    # so that every stand-in (Postgres, redis-server, Azurite) stops and its temporary directory goes
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)

    with contextlib.ExitStack() as stack:
        step(1, "Start the local Azure stand-ins")
        env = start_stand_ins(stack, args.redis_policy, args.mysql)

        import django
        from django.core.files.storage import storages
        from django.core.management import call_command

        django.setup()
        step(2, "Migrate: Postgres sign-in with a managed identity token (no password anywhere)")
        storage: Any = storages["default"]
        if not storage.client.exists():
            storage.client.create_container()
        call_command("migrate", verbosity=1)

        step(3, "manage.py azure_check")
        call_command("azure_check")  # raises CommandError (exit 1) if anything is unhealthy

        step(4, "Serve the site (uvicorn: HTTP and websockets)")
        base = serve(0 if args.once else args.port, stack)
        say(f"    {base}/")

        walkthrough(base, env["REQUESTS_CA_BUNDLE"])
        say("\nWalkthrough passed.")
        if args.once:
            return 0
        say(f"\nThe example site is running at {base}/ (status: {base}/status). Press Ctrl-C to stop.")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
        say("\nStopping the stand-ins.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as exc:
        say(f"    ✗ {exc}")
        sys.exit(1)
    except KeyboardInterrupt:  # stopped while starting: everything started has been stopped
        say("\nStopped.")
        sys.exit(130)
