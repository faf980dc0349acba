"""Secrets out of reach: what an error reporter captures when a service fails with a real token in play.

A real sentry-sdk with ``include_local_variables=True`` and a capturing transport (no network) captures the
failure of each service; the serialized events must not contain the token nor its signature. The test
also walks the exception itself the way a reporter might: ``__context__``/``__cause__`` (suppressed or not)
and every frame's locals, through containers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import jwt
import pytest
from django.core.cache import caches
from django.core.files.base import ContentFile
from django.db import connections

from .conftest import LoopbackServer
from .test_cache import cache_settings

JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{20,}")


class Reporter:
    """sentry-sdk, configured the way a site that wants every detail would, sending to a list."""

    def __init__(self) -> None:
        import sentry_sdk
        from sentry_sdk.integrations.logging import LoggingIntegration
        from sentry_sdk.transport import Transport

        self.sent: list[bytes] = []
        sent = self.sent

        class Capture(Transport):
            def capture_envelope(self, envelope: Any) -> None:
                sent.append(envelope.serialize())

        if int(sentry_sdk.VERSION.split(".")[0]) >= 3:  # 3.0 renamed the options (frame variables: on)
            detail: dict[str, Any] = {"data_collection": {"stack_frame_variables": True}}
            logs = LoggingIntegration(breadcrumb_level=logging.DEBUG, event_level=logging.WARNING)  # type: ignore[call-arg,unused-ignore]
        else:
            detail = {"include_local_variables": True}
            logs = LoggingIntegration(level=logging.DEBUG, event_level=logging.WARNING)
        sentry_sdk.init(
            dsn="https://public@sentry.invalid/1",
            transport=Capture,
            max_value_length=100_000,  # no truncation that could hide half a token
            # no auto-enabled integrations: they patch Django and redis-py for the rest of the process
            default_integrations=False,
            auto_enabling_integrations=False,
            integrations=[logs],
            **detail,
        )
        self.sdk = sentry_sdk

    def capture(self, exc: BaseException) -> bytes:
        self.sdk.capture_exception(exc)
        self.sdk.flush()
        return b"\n".join(self.sent)

    def close(self) -> None:
        self.sdk.get_client().close()
        self.sdk.init(dsn=None, default_integrations=False, auto_enabling_integrations=False)


@pytest.fixture
def reporter() -> Iterator[Reporter]:
    reporter = Reporter()
    yield reporter
    reporter.close()


def reachable(exc: BaseException) -> Iterator[tuple[str, Any]]:
    """Everything a reporter can reach from ``exc``, with its path: the chain (suppressed context
    included), each frame's locals, and what those hold: containers walked, other objects by repr."""
    seen: set[int] = set()
    stack: list[tuple[str, Any, int]] = [("exc", exc, 0)]
    while stack:
        path, value, depth = stack.pop()
        if id(value) in seen or depth > 6:
            continue
        seen.add(id(value))
        yield path, value
        if isinstance(value, BaseException):
            for name in ("__context__", "__cause__", "__traceback__"):
                if getattr(value, name) is not None:
                    stack.append((f"{path}.{name}", getattr(value, name), depth))
            stack.extend((f"{path}.{k}", v, depth + 1) for k, v in vars(value).items())
        elif isinstance(value, TracebackType):
            code = value.tb_frame.f_code
            if code.co_filename != __file__:  # this test's own frame holds the emulator (and its tokens)
                stack.append((f"{path}[{code.co_name}].f_locals", value.tb_frame.f_locals, depth))
            if value.tb_next is not None:
                stack.append((f"{path}.tb_next", value.tb_next, depth))
        elif isinstance(value, dict):
            stack.extend((f"{path}[{k!r}]", v, depth + 1) for k, v in value.items())
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend((f"{path}[{i}]", v, depth + 1) for i, v in enumerate(value))
        # other objects: a reporter shows their repr


def assert_out_of_reach(exc: BaseException, reporter: Reporter, tokens: list[str]) -> None:
    assert tokens, f"no token was issued: the test did not exercise a sign-in ({exc!r})"
    events = reporter.capture(exc)
    assert b'"exception"' in events, "sentry captured nothing"
    for token in tokens:
        signature = token.rsplit(".", 1)[1]
        assert token.encode() not in events
        assert signature[:40].encode() not in events, "the token's signature is in a sentry event"
        for path, value in reachable(exc):
            text = value if isinstance(value, (str, bytes)) else repr(value)
            text = text if isinstance(text, str) else text.decode("latin-1")
            assert signature[:40] not in text, f"the token is reachable from the exception: {path}"
    assert not JWT.search(events)


def issued(azure_imds: Any, resource: str) -> list[str]:
    return [t.token for t in azure_imds.issued if t.resource == resource]


# ---------------------------------------------------------------------------------------------- Postgres


@pytest.mark.parametrize("pool", [False, True])
def test_postgres_failures(pool, azure_postgres, azure_imds, use_databases, reporter):
    from .test_postgres import needs_pool

    if pool and needs_pool.args[0]:
        pytest.skip(needs_pool.kwargs["reason"])
    entry = azure_postgres.database_settings("App-Identity")  # no such role: the sign-in fails
    if pool:
        entry["OPTIONS"]["pool"] = {"min_size": 0, "max_size": 2, "timeout": 2}
    use_databases(default=entry)
    with pytest.raises(Exception) as info:
        connections["default"].ensure_connection()
    assert_out_of_reach(info.value, reporter, issued(azure_imds, "https://ossrdbms-aad.database.windows.net"))


def debug_page(url: str, settings) -> str:
    """The technical 500 page Django renders for a failing request with DEBUG = True."""
    from django.test import Client

    settings.DEBUG = True
    response = Client(raise_request_exception=False).get(url)
    assert response.status_code == 500
    return response.content.decode()


def assert_not_on_page(html: str, tokens: list[str]) -> None:
    assert tokens, "no token was issued: the test did not exercise a sign-in"
    for token in tokens:
        assert token.rsplit(".", 1)[1][:40] not in html, "the token's signature is on the debug page"
    assert not JWT.search(html.encode())


def raising(exc_class: type[BaseException], *args: Any):
    """A driver ``connect`` that fails with ``exc_class`` while its frame holds the password (kwargs)."""

    def connect(*conninfo: Any, **kwargs: Any):
        password = kwargs.get("password")
        assert password, "connect got no password: nothing to leak"
        raise exc_class(*args)

    return connect


CONNECT_FAILURES = {
    # a typo'd libpq option: the driver itself refuses it (ProgrammingError on psycopg and psycopg2)
    "typo-option": None,
    "interface-error": ("InterfaceError", "connection interface broken"),
    "type-error": (TypeError, "connect() got an unexpected keyword argument"),
    "socket-error": (OSError, 104, "Connection reset by peer"),
    "operational-error": ("OperationalError", "server closed the connection unexpectedly"),
}


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("failure", list(CONNECT_FAILURES))
def test_postgres_any_connect_failure_leaves_no_token(
    failure, pool, azure_postgres, azure_imds, use_databases, reporter, settings, monkeypatch
):
    """Whatever class escapes the call that put the token on the wire (the driver's, Django's, ours), no
    frame, chained exception or attribute a reporter reaches holds the token; the debug page neither."""
    from django.db import connections as conns
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    from .test_postgres import ROLE, needs_pool

    if pool and needs_pool.args[0]:
        pytest.skip(needs_pool.kwargs["reason"])
    entry = azure_postgres.database_settings(ROLE)
    if failure == "typo-option":
        entry["OPTIONS"]["sslmdoe"] = "require"
    if pool:
        entry["OPTIONS"]["pool"] = {"min_size": 0, "max_size": 2, "timeout": 2}
    use_databases(default=entry)
    spec = CONNECT_FAILURES[failure]
    if spec is not None:
        driver = conns["default"].Database
        exc_class = getattr(driver, spec[0]) if isinstance(spec[0], str) else spec[0]
        target = driver.Connection if is_psycopg3 and pool else driver
        if is_psycopg3 and pool:  # the pool opens connections with Connection.connect
            monkeypatch.setattr(
                target, "connect", classmethod(lambda cls, *a, **k: raising(exc_class, *spec[1:])(*a, **k))
            )
        else:
            monkeypatch.setattr(target, "connect", raising(exc_class, *spec[1:]))
    with pytest.raises(BaseException) as info:
        conns["default"].ensure_connection()
    tokens = issued(azure_imds, "https://ossrdbms-aad.database.windows.net")
    assert_out_of_reach(info.value, reporter, tokens)
    conns["default"].close()
    assert_not_on_page(debug_page("/boom/db/default/", settings), tokens)


# ---------------------------------------------------------------------------------------------- Redis


@pytest.mark.parametrize("backend", ["django-redis", "builtin"])
def test_redis_failures(backend, azure_redis, azure_imds, settings, reporter):
    from redis.exceptions import AuthenticationError

    settings.CACHES = {
        "default": cache_settings(azure_redis, backend, USERNAME="00000000-0000-0000-0000-000000000000")
    }
    with pytest.raises(AuthenticationError) as info:
        caches["default"].get("x")
    assert_out_of_reach(info.value, reporter, issued(azure_imds, "https://redis.azure.com"))


@pytest.mark.parametrize("backend", ["django-redis", "builtin"])
def test_redis_connection_lost_during_sign_in(backend, azure_imds, settings, reporter):
    """The server hangs up after AUTH: redis-py's frames hold the AUTH arguments when it raises."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    server = LoopbackServer(hang_up=True)
    try:
        entry = cache_settings(
            type("Server", (), {"url": f"redis://127.0.0.1:{server.port}/0", "ca_file": None}), backend
        )
        entry["OPTIONS"].pop("ssl_ca_certs", None)
        entry["OPTIONS"].get("CONNECTION_POOL_KWARGS", {}).pop("ssl_ca_certs", None)
        settings.CACHES = {"default": entry}
        with pytest.raises(RedisConnectionError) as info:
            caches["default"].get("x")
    finally:
        server.close()
    assert_out_of_reach(info.value, reporter, issued(azure_imds, "https://redis.azure.com"))


# ---------------------------------------------------------------------------------------------- Storage


def test_storage_failures(azure_storage, azure_imds, reporter):
    from django_azure_mi.storage import AzureManagedIdentityStorage

    storage = AzureManagedIdentityStorage(
        **azure_storage.storage_options(
            "media", managed_identity={"scope": "https://vault.azure.net/.default"}
        )
    )
    with pytest.raises(Exception) as info:
        storage.save("x.txt", ContentFile(b"x"))
    assert_out_of_reach(info.value, reporter, issued(azure_imds, "https://vault.azure.net"))


@pytest.mark.slow
@pytest.mark.parametrize("operation", ["save", "open", "exists", "listdir", "size", "url", "delete"])
def test_storage_server_hanging_up_leaves_no_token(operation, azure_imds, reporter, settings, tmp_path):
    """A server that reads the request (the bearer token in it) and hangs up: the SDK's error keeps the
    requests frames (``headers["Authorization"]``) in ``exc_traceback``; nothing our backend lets out
    may reach them, whatever the operation, nor the debug page."""
    from django_azure_mi.testing.certs import make_tls_files

    tls = make_tls_files(tmp_path)
    server = LoopbackServer(hang_up=True, tls=tls)
    options = {
        "account_url": f"https://127.0.0.1:{server.port}/devstoreaccount1",
        "azure_container": "media",
        "client_options": {"connection_verify": tls.ca_file},
        "expiration_secs": 600,
    }
    settings.STORAGES = {
        "default": {"BACKEND": "django_azure_mi.storage.AzureManagedIdentityStorage", "OPTIONS": options},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    try:
        from django.core.files.storage import storages

        storage = storages["default"]
        calls = {
            "save": lambda: storage.save("x.txt", ContentFile(b"x")),
            "open": lambda: storage.open("x.txt"),
            "exists": lambda: storage.exists("x.txt"),
            "listdir": lambda: storage.listdir(""),
            "size": lambda: storage.size("x.txt"),
            "url": lambda: storage.url("x.txt"),
            "delete": lambda: storage.delete("x.txt"),
        }
        with pytest.raises(Exception) as info:
            calls[operation]()
        tokens = issued(azure_imds, "https://storage.azure.com")
        assert_out_of_reach(info.value, reporter, tokens)
        if operation != "url":  # the diagnosis is attached (url(): the delegation key's own error)
            from django_azure_mi.diagnostics import failure_of

            assert failure_of(info.value) is not None, repr(info.value)
        if operation == "save":
            assert_not_on_page(debug_page("/boom/storage/default/", settings), tokens)
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------- Key Vault


def test_keyvault_failures(azure_keyvault, azure_imds, reporter):
    from django_azure_mi.keyvault import SecretError, secret

    azure_keyvault.set_secret("db-password", "value")
    azure_keyvault.revoke(azure_imds.object_id())
    with pytest.raises(SecretError) as info:
        secret("db-password")
    assert_out_of_reach(info.value, reporter, issued(azure_imds, "https://vault.azure.net"))


def test_keyvault_missing_secret_leaves_no_token(azure_keyvault, azure_imds, reporter):
    """A missing secret: the SDK's 404 (its traceback holding the request's bearer token) was chained on
    as the context of our SecretError."""
    from django_azure_mi.keyvault import SecretError, secret

    with pytest.raises(SecretError) as info:
        secret("no-such-secret")
    assert_out_of_reach(info.value, reporter, issued(azure_imds, "https://vault.azure.net"))


# ---------------------------------------------------------------------------------------------- audience

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


@pytest.mark.parametrize("resource", ["https://management.azure.com", "https://vault.azure.net"])
@pytest.mark.parametrize("service", ["storage", "keyvault"])
def test_a_challenge_for_another_audience_gets_no_token(service, resource, azure_imds, tmp_path):
    """An endpoint that answers 401 with a challenge for another resource (anyone who can answer for the
    account URL or the vault) must not make the SDK collect a token for that resource from our
    credential: refused, naming the binding and the scope asked for, and nothing fetched."""
    from django_azure_mi.testing.certs import make_tls_files

    from .conftest import ChallengeServer

    if service == "keyvault" and resource == "https://vault.azure.net":
        resource = "https://storage.azure.com"  # the vault's own scope is its to ask for
    tls = make_tls_files(tmp_path)
    if service == "storage":
        challenge = (
            f"Bearer authorization_uri=https://login.microsoftonline.com/{TENANT}/oauth2/authorize "
            f"resource_id={resource}"
        )
    else:
        challenge = (
            f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="{resource}"'
        )
    server = ChallengeServer(tls, challenge)
    try:
        if service == "storage":
            from django_azure_mi.storage import AzureManagedIdentityStorage

            storage = AzureManagedIdentityStorage(
                account_url=f"https://127.0.0.1:{server.port}/devstoreaccount1",
                azure_container="media",
                client_options={"connection_verify": tls.ca_file, "retry_total": 0},
            )
            call = lambda: storage.exists("x.txt")  # noqa: E731
            binding = "['managed_identity']"
        else:
            import os

            from django_azure_mi.keyvault import secret

            os.environ["REQUESTS_CA_BUNDLE"] = tls.ca_file
            call = lambda: secret("db-password", vault_url=f"https://127.0.0.1:{server.port}/")  # noqa: E731
            binding = "AZURE_KEY_VAULT_URL"
        try:
            with pytest.raises(Exception) as info:
                call()
        finally:
            os_environ = __import__("os").environ
            os_environ.pop("REQUESTS_CA_BUNDLE", None)
    finally:
        server.close()
    asked = [t.resource for t in azure_imds.issued]
    assert resource not in asked, f"a token for {resource} was fetched"
    for header in server.received:
        token = header.split(" ", 1)[1]
        audience = jwt.decode(token, options={"verify_signature": False})["aud"]
        assert audience != resource, f"the endpoint collected a token for {audience}"
    message = str(info.value)
    chain = [info.value, info.value.__cause__, info.value.__context__]
    assert any(type(e).__name__ == "ScopeRefusedError" for e in chain) or "serves tokens for" in message, (
        message
    )
    assert resource in message and binding in message, message
