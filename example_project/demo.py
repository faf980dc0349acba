#!/usr/bin/env python
"""`make demo`: the example site on local Azure stand-ins, no Azure subscription needed.

Starts the IMDS emulator (the app's managed identity), a token-checking Postgres, Redis with Entra-style
ACL users behind a TLS enforcer, Azurite with OAuth over HTTPS and a Key Vault stand-in; points the example
site's environment variables at them; migrates; runs `manage.py azure_check`; walks through the site over
HTTP (upload, signed link, cache, database rows, status and health pages); then keeps the site running until
Ctrl-C. `--once` stops after the walkthrough (CI runs that), exiting non-zero if any step failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import sys
import threading
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

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


class _ThreadingServer(WSGIServer):
    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        threading.Thread(target=self._handle, args=(request, client_address), daemon=True).start()

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        finally:
            self.shutdown_request(request)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_stand_ins(stack: contextlib.ExitStack, redis_policy: str) -> dict[str, str]:
    """The stand-ins, wired together, as ``python -m django_azure_mi.testing`` starts them."""
    from django_azure_mi.testing.local import LocalAzure

    local = stack.enter_context(LocalAzure(redis_policy=redis_policy))
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

    status = session.get(base + "/status", timeout=30)
    check(status.status_code == 200 and ">healthy<" in status.text, "GET /status: every connection healthy")
    ready = session.get(base + "/health/ready", timeout=30)
    check(ready.status_code == 200 and ready.json()["status"] == "ok", "GET /health/ready: 200")
    live = session.get(base + "/health/live", timeout=30)
    check(live.status_code == 200, "GET /health/live: 200")


def main() -> int:
    from django_azure_mi.testing.local import add_redis_policy

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--once", action="store_true", help="exit after the walkthrough (CI)")
    parser.add_argument("--port", type=int, default=8000, help="port for the site (default 8000, 0 = any)")
    add_redis_policy(parser)
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        step(1, "Start the local Azure stand-ins")
        env = start_stand_ins(stack, args.redis_policy)

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

        step(4, "Serve the site")
        from django.core.wsgi import get_wsgi_application

        port = 0 if args.once else args.port
        try:
            server = make_server("127.0.0.1", port, get_wsgi_application(), _ThreadingServer, _QuietHandler)
        except OSError:
            server = make_server("127.0.0.1", 0, get_wsgi_application(), _ThreadingServer, _QuietHandler)
        base = f"http://127.0.0.1:{server.server_port}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stack.callback(server.shutdown)
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
