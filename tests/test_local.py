"""``python -m django_azure_mi.testing``: local Azure outside pytest, stopped cleanly by either signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


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
    [(signal.SIGINT, "oss"), (signal.SIGTERM, "enterprise")],
    ids=["SIGINT-oss", "SIGTERM-enterprise"],
)
def test_serves_then_stops_every_child_on_a_signal(signum, policy, tmp_path):
    env_file = tmp_path / ".env.azure"
    command = [sys.executable, "-m", "django_azure_mi.testing", "--env-file", str(env_file)]
    proc = subprocess.Popen(
        [*command, "--redis-policy", policy] if policy != "oss" else command,  # oss: the default
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if line.startswith("# ready") or not line:  # not any line with "ready" ("already…")
                break
        assert lines[-1].startswith("# ready"), "".join(lines)
        assert env_file.exists(), "".join(lines)
        exports = env_file.read_text()
        exported = [line[7:] for line in exports.splitlines() if line.startswith("export ")]
        values = dict(line.split("=", 1) for line in exported)
        for name in ("AZURE_POD_IDENTITY_AUTHORITY_HOST", "AZURE_POSTGRES_PORT", "AZURE_REDIS_URL",
                     "AZURE_STORAGE_ACCOUNT_URL", "AZURE_KEY_VAULT_URL", "REQUESTS_CA_BUNDLE"):  # fmt: skip
            assert name in values, exports
        assert values["AZURE_REDIS_POLICY"] == policy
        roots = [
            str(Path(values[name].strip("'")).parents[1])
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
