"""Azurite (the Azure Storage emulator) with OAuth over HTTPS: a local Blob endpoint checking bearer tokens.

Runs ``azurite-blob --oauth basic`` with a generated certificate on a free loopback port, data in a temp dir.
Azurite checks a token's issuer prefix, audience (``https://storage.azure.com`` or the account URL), nbf/exp
and iat (not its signature), and user delegation keys need the ``oid`` and ``tid`` claims: the tokens of
:class:`~django_azure_mi.testing.imds.IMDSEmulator` satisfy it. ``--debug`` logs each operation, which
:meth:`AzuriteStandIn.operation_count` reads (e.g. how many user delegation keys were requested).

The npm package: ``AZURITE_BIN``, else this repository's ``tools/azurite`` (``npm ci`` there), else
``azurite-blob`` on PATH (``npm install -g azurite``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .base import Missing, StandIn
from .certs import make_tls_files
from .imds import IMDSEmulator
from .net import free_port

STORAGE_RESOURCE = "https://storage.azure.com"

ACCOUNT = "devstoreaccount1"
# The Azurite whose service API version matches the storage SDK we test with: older ones answer the SDK's
# signed URLs with 403 (their sv= is newer than they know).
AZURITE_VERSION = "3.37.0"


def find_azurite() -> str:
    for candidate in _candidates():
        if candidate and os.path.exists(candidate):
            return candidate
    raise Missing(
        f"the Blob Storage stand-in needs Azurite: `npm install azurite@{AZURITE_VERSION}` and "
        "AZURITE_BIN=$PWD/node_modules/.bin/azurite-blob (in a clone of django-azure-mi: `make venv`); or "
        "leave storage out (--no-storage)."
    )


def _candidates() -> list[str]:
    """Where Azurite is looked for: AZURITE_BIN, this repository's tools/azurite, PATH."""
    return [
        os.environ.get("AZURITE_BIN", ""),
        str(
            Path(__file__).resolve().parents[2]
            / "tools"
            / "azurite"
            / "node_modules"
            / ".bin"
            / "azurite-blob"
        ),
        shutil.which("azurite-blob") or "",
    ]


def check_version(binary: str) -> str:
    """The Azurite version at ``binary``; an older one than AZURITE_VERSION is refused, naming the fix."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{binary} --version failed: {exc}") from None
    found = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    wanted = tuple(int(part) for part in AZURITE_VERSION.split("."))
    if found is None or tuple(int(part) for part in found.groups()) < wanted:
        version = found.group(0) if found else repr(out.strip()[:40])
        raise RuntimeError(
            f"Azurite {version} at {binary} is too old for this storage SDK: its signed URLs carry a newer "
            f"service version, which Azurite answers with 403. Install the pinned one: `npm install "
            f"azurite@{AZURITE_VERSION}` and set AZURITE_BIN=node_modules/.bin/azurite-blob."
        )
    return found.group(0)


class AzuriteStandIn(StandIn):
    """See the module docstring. Context manager."""

    def __init__(self, *, account: str = ACCOUNT) -> None:
        self.account = account
        self.host = "127.0.0.1"
        self.port = 0
        self._tmp: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.version: str | None = None

    @property
    def account_url(self) -> str:
        """Path-style account URL: ``https://127.0.0.1:PORT/devstoreaccount1``."""
        return f"https://{self.host}:{self.port}/{self.account}"

    @property
    def debug_log(self) -> str:
        assert self._tmp
        return os.path.join(self._tmp, "debug.log")

    def start(self) -> AzuriteStandIn:
        binary = find_azurite()
        self.version = check_version(binary)
        self._tmp = tempfile.mkdtemp(prefix="django-azure-mi-azurite-")
        self.tls = make_tls_files(os.path.join(self._tmp, "tls"))
        self.port = free_port()
        os.makedirs(os.path.join(self._tmp, "data"))
        self._launch(binary)
        return self

    def _launch(self, binary: str) -> None:
        assert self._tmp and self.tls
        data = os.path.join(self._tmp, "data")
        self._proc = subprocess.Popen(
            [
                binary,
                "--blobHost",
                self.host,
                "--blobPort",
                str(self.port),
                "--location",
                data,
                "--oauth",
                "basic",
                "--cert",
                self.tls.cert_file,
                "--key",
                self.tls.key_file,
                "--skipApiVersionCheck",
                "--loose",
                "--debug",
                self.debug_log,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"azurite did not start ({binary})") from None
                time.sleep(0.1)

    def restart(self, downtime: float = 1.0) -> None:
        """Restart Azurite on the same port with the same data, as a storage front end restarts: open
        connections drop and new ones are refused for ``downtime`` seconds. Keys and tokens stay valid."""
        assert self._tmp, "not started"
        self._terminate()
        time.sleep(downtime)
        self._launch(find_azurite())

    def _terminate(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:  # Azurite waits for open keep-alive connections to close; its data is throwaway anyway
                self._proc.wait(2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None

    def stop(self) -> None:
        self._terminate()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def operation_count(self, operation: str = "Service_GetUserDelegationKey") -> int:
        """How many times Azurite logged ``Operation=<operation>`` (each request is logged once)."""
        try:
            with open(self.debug_log, errors="replace") as fh:
                return len(re.findall(rf"Operation={re.escape(operation)}\b", fh.read()))
        except FileNotFoundError:
            return 0

    def settled_count(
        self, operation: str = "Service_GetUserDelegationKey", quiet: float = 0.5, timeout: float = 10.0
    ) -> int:
        """:meth:`operation_count` once Azurite's (asynchronous) debug log has stopped growing for ``quiet``
        seconds - count after the requests you made have been logged."""
        deadline = time.monotonic() + timeout
        size, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            current = os.path.getsize(self.debug_log) if os.path.exists(self.debug_log) else 0
            if current != size:
                size, since = current, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
            time.sleep(0.05)
        return self.operation_count(operation)

    def create_container(self, name: str, imds: IMDSEmulator) -> None:
        """Create container ``name`` (if it isn't there) with a token ``imds`` mints, as a deployment
        script would before the site starts."""
        from azure.core.credentials import AccessToken
        from azure.storage.blob import ContainerClient

        issued = imds.mint(STORAGE_RESOURCE)

        class _Minted:
            def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
                return AccessToken(issued.token, issued.expires_on)

        client = ContainerClient(self.account_url, name, credential=_Minted(), connection_verify=self.ca_file)
        with client:
            if not client.exists():
                client.create_container()

    def storage_settings(self, container: str = "media", **extra: Any) -> dict[str, Any]:
        """A ``STORAGES`` entry for our backend against this Azurite (create the container first:
        ``storages[alias].client.create_container()``)."""
        return {
            "BACKEND": "django_azure_mi.storage.AzureManagedIdentityStorage",
            "OPTIONS": self.storage_options(container, **extra),
        }

    def storage_options(self, container: str = "media", **extra: Any) -> dict[str, Any]:
        """``STORAGES[...]["OPTIONS"]`` for our backend against this Azurite."""
        return storage_entry(self.account_url, container, self.ca_file, **extra)["OPTIONS"]  # type: ignore[no-any-return]


def storage_entry(account_url: str, container: str, ca_file: str, **extra: Any) -> dict[str, Any]:
    """A ``STORAGES`` entry for our backend against an Azurite at ``account_url``."""
    options: dict[str, Any] = {
        "account_url": account_url,
        "azure_container": container,
        "client_options": {"connection_verify": ca_file},
        **extra,
    }
    return {"BACKEND": "django_azure_mi.storage.AzureManagedIdentityStorage", "OPTIONS": options}
