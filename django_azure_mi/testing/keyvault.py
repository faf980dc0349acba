"""A local stand-in for Azure Key Vault's secrets API, over HTTPS, speaking the flow the real
``azure.keyvault.secrets.SecretClient`` uses:

1. the client's first request carries no token; the vault answers ``401`` with
   ``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
   resource="https://vault.azure.net"``;
2. the client gets a token for ``https://vault.azure.net/.default`` and repeats the request with
   ``Authorization: Bearer <token>``;
3. the vault accepts only tokens the attached :class:`~.imds.IMDSEmulator` issued for the vault resource
   (unexpired, right audience), and only for identities granted read access (``403 Forbidden`` /
   ``ForbiddenByRbac`` otherwise, like Azure RBAC without "Key Vault Secrets User").

Secrets live in memory: ``vault.set_secret("db-password", "…")``. Because the vault is on 127.0.0.1 while
the challenge names ``vault.azure.net``, clients must pass ``verify_challenge_resource=False`` (the
``django_azure_mi.keyvault`` helper does this for loopback vaults only).

    with IMDSEmulator() as imds, KeyVaultStandIn() as vault:
        detach = vault.attach(imds)
        vault.set_secret("db-password", "s3cret")
        vault.grant(imds.object_id())
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import jwt

from .base import StandIn
from .certs import TLSFiles, make_tls_files

if TYPE_CHECKING:
    from .imds import IMDSEmulator, IssuedToken

RESOURCE = "https://vault.azure.net"
_SECRET_PATH = re.compile(r"^/secrets/([0-9A-Za-z-]{1,127})(?:/([0-9a-f]{32}))?/?$")


class KeyVaultStandIn(StandIn):
    """Key Vault secrets (get only) on ``https://127.0.0.1:<port>``. Context manager; thread-safe."""

    def __init__(self, *, tenant_id: str | None = None, rbac: bool = True) -> None:
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.rbac = rbac  # False: every identity with a valid token may read
        self._lock = threading.Lock()
        self._secrets: dict[str, list[tuple[str, str, int]]] = {}  # name -> [(version, value, updated)]
        self._tokens: dict[str, float] = {}  # accepted token -> exp
        self._readers: set[str] = set()
        self.requests = 0
        self.challenges = 0
        self.rejected = 0
        self._tmp = tempfile.mkdtemp(prefix="django-azure-mi-keyvault-")
        self.tls: TLSFiles = make_tls_files(os.path.join(self._tmp, "tls"))
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """The vault URL (the value for ``AZURE_KEY_VAULT_URL``)."""
        assert self._server is not None, "start() first"
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def ca_file(self) -> str:
        """The CA certificate that signed the vault's TLS certificate."""
        return self.tls.ca_file

    def start(self) -> KeyVaultStandIn:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.vault = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="keyvault-stand-in", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    # ------------------------------------------------------------------ content and access

    def attach(self, imds: IMDSEmulator) -> Callable[[], None]:
        """Accept the vault-scope tokens ``imds`` issues. Returns a detach function."""
        self.tenant_id = imds.tenant_id
        return imds.on_token(self._on_token)

    def _on_token(self, issued: IssuedToken) -> None:
        if issued.resource.rstrip("/") == RESOURCE:
            with self._lock:
                self._tokens[issued.token] = issued.expires_on

    def grant(self, object_id: str) -> None:
        """Give an identity read access to secrets (the "Key Vault Secrets User" role)."""
        with self._lock:
            self._readers.add(object_id)

    def revoke(self, object_id: str) -> None:
        with self._lock:
            self._readers.discard(object_id)

    def set_secret(self, name: str, value: str) -> str:
        """Add a new version of a secret; returns the version id."""
        if not re.fullmatch(r"[0-9A-Za-z-]{1,127}", name):
            raise ValueError(f"invalid Key Vault secret name {name!r}")
        version = uuid.uuid4().hex
        with self._lock:
            self._secrets.setdefault(name, []).append((version, value, int(time.time())))
        return version

    def delete_secret(self, name: str) -> None:
        with self._lock:
            self._secrets.pop(name, None)

    def reset(self) -> None:
        """Between tests: forget secrets, grants, accepted tokens and counters."""
        with self._lock:
            self._secrets.clear()
            self._readers.clear()
            self._tokens.clear()
            self.requests = self.challenges = self.rejected = 0

    # ------------------------------------------------------------------ protocol

    def _handle(self, handler: _Handler) -> None:
        with self._lock:
            self.requests += 1
        path = urlsplit(handler.path).path
        match = _SECRET_PATH.match(path)
        if handler.command != "GET" or match is None:
            handler.reply(400, _error("BadParameter", f"{handler.command} {path} is not supported here"))
            return
        auth = handler.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            with self._lock:
                self.challenges += 1
            challenge = (
                f'Bearer authorization="https://login.microsoftonline.com/{self.tenant_id}", '
                f'resource="{RESOURCE}"'
            )
            handler.reply(
                401,
                _error("Unauthorized", "AKV10000: Request is missing a Bearer or PoP token."),
                {"WWW-Authenticate": challenge},
            )
            return
        problem, oid = self._check_token(auth[len("Bearer ") :])
        if problem:
            with self._lock:
                self.rejected += 1
            handler.reply(401, _error("Unauthorized", problem))
            return
        with self._lock:
            allowed = not self.rbac or oid in self._readers
            versions = list(self._secrets.get(match.group(1), ()))
        if not allowed:
            message = (
                "Caller is not authorized to perform action on resource. "
                f"Caller: appid=;oid={oid}; Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'"
            )
            handler.reply(403, _error("Forbidden", message, inner="ForbiddenByRbac"))
            return
        wanted = match.group(2)
        found = [v for v in versions if wanted is None or v[0] == wanted]
        if not found:
            message = f"A secret with (name/id) {match.group(1)} was not found in this key vault."
            handler.reply(404, _error("SecretNotFound", message))
            return
        version, value, updated = found[-1]
        handler.reply(
            200,
            {
                "value": value,
                "id": f"{self.url}/secrets/{match.group(1)}/{version}",
                "attributes": {
                    "enabled": True,
                    "created": updated,
                    "updated": updated,
                    "recoveryLevel": "Recoverable+Purgeable",
                    "recoverableDays": 90,
                },
                "tags": {},
            },
        )

    def _check_token(self, token: str) -> tuple[str | None, str | None]:
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return "AKV10000: Invalid token: not a JWT.", None
        with self._lock:
            known = token in self._tokens
        if claims.get("aud", "").rstrip("/") != RESOURCE:
            return f"AKV10022: Invalid audience. Expected {RESOURCE}, found: {claims.get('aud')}.", None
        if not known:
            return "AKV10032: Invalid issuer or token not issued by this tenant's identity endpoint.", None
        if float(claims.get("exp", 0)) <= time.time():
            expired = datetime.datetime.fromtimestamp(float(claims.get("exp", 0)), datetime.timezone.utc)
            return f"AKV10032: Token expired at {expired:%Y-%m-%d %H:%M:%S}Z.", None
        return None, str(claims.get("oid"))


def _error(code: str, message: str, inner: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if inner:
        body["innererror"] = {"code": inner}
    return {"error": body}


MAX_REQUEST = 256 * 1024  # Key Vault's secrets are at most 25 kB; its front end refuses far larger bodies


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self._drain():
            self.server.vault._handle(self)  # type: ignore[attr-defined]

    do_PUT = do_POST = do_DELETE = do_GET

    def _drain(self) -> bool:
        """Read the request's body; a Content-Length that is not a length, or is larger than Key Vault
        takes, gets the 400 / 413 Azure's front end gives, and the connection is closed (the body can't be
        found). False: answered here."""
        raw = self.headers.get("Content-Length") or "0"
        try:
            length = int(raw)
            if length < 0 or not raw.strip().isdigit():
                raise ValueError(raw)
        except ValueError:
            self.close_connection = True
            self.reply(400, _error("BadRequest", "Bad Request - Invalid Content Length"))
            return False
        if length > MAX_REQUEST:
            self.close_connection = True
            self.reply(413, _error("RequestEntityTooLarge", "The request is larger than Key Vault accepts."))
            return False
        if length:
            self.rfile.read(length)
        return True

    def reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-keyvault-service-version", "1.9.0.0")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass
