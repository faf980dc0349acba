"""``python -m django_azure_mi.testing``: local Azure outside pytest, stopped cleanly by either signal."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dotenv
import pytest
from dotenv.parser import parse_stream

USER_ASSIGNED = "22222222-3333-4444-5555-666666666666"


def read_until(stream, done, seconds: float) -> list[str]:
    """Lines of a child's ``stream`` up to the first that ``done`` accepts, the end of the stream, or
    ``seconds``; the caller asserts on the last one."""
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = stream.readline()
        lines.append(line)
        if done(line) or not line:
            break
    return lines


def processes_under(roots: list[str]) -> list[int]:
    """Pids whose command line names one of ``roots`` (the stand-ins' temporary directories)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(root in cmdline for root in roots):
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> set[int]:
    """The live processes under ``pid`` (children, grandchildren...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


@pytest.mark.parametrize(
    ("signum", "policy"),
    [(signal.SIGINT, "oss"), (signal.SIGTERM, "enterprise"), (signal.SIGHUP, "single")],
    ids=["SIGINT-oss", "SIGTERM-enterprise", "SIGHUP-single"],
)
def test_serves_then_stops_every_child_on_a_signal(signum, policy, tmp_path):
    """SIGHUP: with a user-assigned identity (--client-id), which the site then signs in with."""
    env_file = tmp_path / ".env.azure"
    extra = ["--client-id", USER_ASSIGNED] if signum == signal.SIGHUP else []
    command = [sys.executable, "-m", "django_azure_mi.testing", "--env-file", str(env_file)]
    proc = subprocess.Popen(
        [*command, "--redis-policy", policy, *extra] if policy != "oss" else command,  # oss: the default
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    try:
        # not any line with "ready" ("already…")
        lines = read_until(proc.stderr, lambda line: line.startswith("# ready"), 120)
        assert lines[-1].startswith("# ready"), "".join(lines)
        assert env_file.exists(), "".join(lines)
        exports = env_file.read_text()
        unparsed = [b.original.string for b in parse_stream(io.StringIO(exports)) if b.error]
        assert unparsed == [], unparsed  # python-dotenv "could not parse" the `unset` lines it used to get
        values = dotenv.dotenv_values(env_file)
        for name in ("AZURE_POD_IDENTITY_AUTHORITY_HOST", "AZURE_POSTGRES_PORT", "AZURE_REDIS_URL",
                     "AZURE_STORAGE_ACCOUNT_URL", "AZURE_KEY_VAULT_URL", "REQUESTS_CA_BUNDLE"):  # fmt: skip
            assert name in values, exports
        assert values["AZURE_REDIS_POLICY"] == policy
        assert "# IDENTITY_ENDPOINT must not be set" in exports and "unset " not in exports
        assert values.get("AZURE_CLIENT_ID") == (USER_ASSIGNED if extra else None), exports
        assert container_exists(values), "the CLI names a container it did not create"
        roots = [
            str(Path(values[name]).parents[1])
            for name in ("AZURE_POSTGRES_SSLROOTCERT", "AZURE_REDIS_CA_CERTS", "AZURE_STORAGE_CA_BUNDLE")
        ]
        # redis-server and Azurite run under the command; Postgres (pg_ctl) detaches, found by its data dir
        running = descendants(proc.pid) | set(processes_under(roots))
        assert len(running) >= 3, running  # postgres, redis-server, Azurite (node), ...
        proc.send_signal(signum)
        assert proc.wait(60) == 0, proc.stderr.read()
        deadline = time.monotonic() + 10
        while alive(running) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert alive(running) == set()
        assert processes_under(roots) == []
        assert not any(Path(root).exists() for root in roots)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def container_exists(values: dict) -> bool:
    """AZURE_STORAGE_CONTAINER exists, asked as the site would ask (the identity, the stand-in's CA)."""
    from azure.identity import ManagedIdentityCredential
    from azure.storage.blob import ContainerClient

    saved = {name: os.environ.get(name) for name in values}
    os.environ.update({name: value for name, value in values.items() if value is not None})
    try:
        credential = ManagedIdentityCredential(client_id=values.get("AZURE_CLIENT_ID"))
        container = ContainerClient(
            values["AZURE_STORAGE_ACCOUNT_URL"],
            values["AZURE_STORAGE_CONTAINER"],
            credential=credential,
            connection_verify=values["AZURE_STORAGE_CA_BUNDLE"],
        )
        return bool(container.exists())
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_a_missing_azurite_is_one_line_that_says_how_to_install_it(monkeypatch, capsys):
    """No Azurite: one line naming the npm package and AZURITE_BIN, or --no-storage; no traceback, exit 2
    (it was a 25-line traceback pointing at tools/azurite, a folder a wheel user doesn't have)."""
    from django_azure_mi.testing import __main__ as cli
    from django_azure_mi.testing import azurite

    monkeypatch.setattr(azurite, "_candidates", lambda: ["/nonexistent/azurite-blob"])
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    assert cli.main(["--services", "storage"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert f"npm install azurite@{azurite.AZURITE_VERSION}" in err and "AZURITE_BIN" in err
    assert "--no-storage" in err and "Traceback" not in err
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers  # put back


def test_runuser_not_on_path_says_so(monkeypatch):
    """As root without /usr/sbin on PATH: what is missing and what to do, not FileNotFoundError."""
    from django_azure_mi.testing import postgres
    from django_azure_mi.testing.base import Missing

    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres.os.path, "exists", lambda path: False)
    with pytest.raises(Missing, match=r"runuser .*add /usr/sbin to PATH"):
        postgres.runuser()


def test_a_stand_in_that_fails_to_start_partway_leaves_nothing_running(monkeypatch):
    """A start that fails after the server process is up (here: its ACL bootstrap) stops that process
    before the error goes on; it used to be orphaned."""
    from django_azure_mi.testing import redis
    from django_azure_mi.testing.redis import RedisStandIn

    def broken(*args: object) -> None:
        raise RuntimeError("bootstrap failed")

    monkeypatch.setattr(redis, "bootstrap_acl", broken)
    server = RedisStandIn()
    with pytest.raises(RuntimeError, match="bootstrap failed"), server:
        pass
    assert server._server is not None and server._server.poll() is not None  # started, then stopped


@pytest.mark.slow
def test_the_settings_helper_points_a_site_at_the_stand_ins(monkeypatch, capsys, django_db_blocker):
    """What the CLI exports, turned into settings by ``testing.settings.stand_in_settings()`` (the CA
    files wired into each client, which a new user had to guess): azure_check passes for every service,
    MySQL (asked for by name) included where MariaDB is installed."""
    import json

    from django.core.management import call_command
    from django.test import override_settings

    from django_azure_mi import runtime
    from django_azure_mi.testing.base import Missing
    from django_azure_mi.testing.local import SERVICES, LocalAzure
    from django_azure_mi.testing.mysql import find_mariadb
    from django_azure_mi.testing.pytest_plugin import _override_databases, _restore_databases
    from django_azure_mi.testing.settings import MARKER, stand_in_settings

    try:
        find_mariadb()
        services = (*SERVICES, "mysql")
    except Missing:
        services = SERVICES
    with LocalAzure(services, redis_policy="single") as local:
        assert local.env[MARKER] == "1"
        for name in local.unset:
            monkeypatch.delenv(name, raising=False)
        for name, value in local.env.items():
            monkeypatch.setenv(name, value)
        settings = stand_in_settings()
        assert set(settings) >= {"DATABASES", "CACHES", "STORAGES", "CHANNEL_LAYERS", "CELERY_BROKER_URL"}
        assert ("mysql" in settings["DATABASES"]) == ("mysql" in services)
        databases = _override_databases(settings.pop("DATABASES"))  # Django's connections reset too
        try:
            with override_settings(**settings), django_db_blocker.unblock():
                runtime.reset()
                results = []
                for selection in ([], ["--celery"]):  # every service; Celery when asked
                    call_command("azure_check", "--json", *selection)
                    results += json.loads(capsys.readouterr().out)["results"]
        finally:
            _restore_databases([databases])
            runtime.reset()
    failed = [r for r in results if not r["ok"]]
    assert failed == [], failed
    checked = {r["service"] for r in results}
    assert checked >= {"postgres", "redis", "storage", "keyvault", "channels", "celery"}, checked
    assert ("mysql" in checked) == ("mysql" in services), checked
