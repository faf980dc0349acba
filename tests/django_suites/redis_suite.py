"""django-redis's own test suite (the installed version's sdist) on the enforcing Redis stand-in, stock
(an ACL password) and with our connection factory (tokens): the second half of run.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sdist import sdist_tests  # noqa: E402

# Settings modules of django-redis's suite that need what this machine lacks (Sentinel, a Unix socket
# server, optional compressors/serializers that are not installed) are left out.
SKIPPED_SETTINGS = ["sentinel", "usock", "lz4", "zstd"]
DESELECTED = [
    # Clears the client's options dict (_options), which is the settings' own CACHES[...]["OPTIONS"] (Django
    # copies the entry shallowly): every later test in that worker then runs without CONNECTION_FACTORY,
    # MANAGED_IDENTITY and the stand-in's CA, stock or ours, depending on test order. It passes here.
    "tests/test_client.py::TestClientClose::test_close_client_disconnect_default",
]
FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)
COUNTS = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected)")
SUMMARY = re.compile(r"\d+ (passed|failed|errors?)\b.* in [\d.]+s")


def unpack(cache: Path, workdir: Path) -> Path:
    """django-redis's tests/ from the installed version's sdist, its settings pointed at the stand-in."""
    import django_redis

    version = ".".join(map(str, django_redis.VERSION))
    tests = sdist_tests(cache, workdir, f"django-redis=={version}", f"django[_-]redis-{version}.tar.gz")
    for module in (tests / "settings").glob("sqlite*.py"):
        with module.open("a") as out:
            out.write("\nfrom azure_overlay import rewrite as _rewrite\n\nCACHES = _rewrite(CACHES)\n")
    return tests


def run(
    tests: Path, name: str, target: dict[str, Any], only: list[str] | None = None
) -> tuple[int, set[str], str]:
    """django-redis's suite (or ``only`` these test ids, one process) on ``target``: (tests run or -1, the
    failed test ids, the output)."""
    env = {"DJANGO_REDIS_SUITE": json.dumps(target)}
    args = [
        "-n",
        "0" if only or target.get("amr") else "2",  # AMR: one database, so one worker
        "-o",
        "pythonpath=tests",
        "-p",
        "no:django",
        "--timeout=120",  # a test that hangs on a stand-in fails instead of holding the lane
        "--tb=line",  # where most tests fail (stock on a cluster), full tracebacks took minutes
        *(
            only
            or [
                "-k",
                " and ".join(f"not {s}" for s in SKIPPED_SETTINGS),
                *[f"--deselect={d}" for d in DESELECTED],
                "tests",
            ]
        ),
    ]
    return pytest_run(tests.parent, name, env, args, quiet=bool(only))


def pytest_run(
    cwd: Path, name: str, env: dict[str, str], args: list[str], quiet: bool = False
) -> tuple[int, set[str], str]:
    """pytest in a subprocess (in ``cwd``, ``env`` added, this directory on PYTHONPATH, none of the
    package's or the project's plugins): (tests run or -1, the failed test ids, the output)."""
    env = {**os.environ, **env, "PYTHONPATH": str(HERE)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    started = time.monotonic()
    plugins = ["-p", "no:cacheprovider", "-p", "no:django_azure_mi", "-p", "no:randomly"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfE", "-o", "addopts=", *plugins, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    summary = [line for line in done.stdout.splitlines() if SUMMARY.search(line)]  # pytest's last line
    counts = {kind: int(n) for n, kind in COUNTS.findall(summary[-1] if summary else "")}
    failures = set(FAILED.findall(output))
    ran = counts.get("passed", 0) + counts.get("failed", 0) if counts else -1
    if not quiet:
        print(
            f"{name:<17} ran {ran:>5} tests in {time.monotonic() - started:5.0f} s, "
            f"{len(failures)} failures/errors",
            flush=True,
        )
    return ran, failures, output


def explain(output: str, test: str) -> str:
    """pytest's short summary line for ``test`` in ``output`` (what failed and why), or ''."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")) and test in line:
            return line
    return ""


def rerun(tests: Path, target: dict[str, Any], failed: list[str], times: int = 3) -> list[str]:
    """The tests of ``failed`` that fail again in any of ``times`` runs of their own (one process)."""
    again: set[str] = set()
    for _ in range(times):
        ran, failures, _ = run(tests, "rerun", target, only=failed)
        again |= failures if ran > 0 else set(failed)
    return sorted(again)
