"""channels_redis's own test suite (the installed version's sdist) on the enforcing Redis stand-in, stock
(an ACL password) and with our layers (tokens): run.py's third part."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from redis_suite import pytest_run
from sdist import sdist_tests

# Redis Sentinel: not on Azure, and not on this machine
IGNORED = ["tests/test_sentinel.py", "tests/test_pubsub_sentinel.py"]


def unpack(cache: Path, workdir: Path) -> Path:
    import channels_redis

    version = channels_redis.__version__
    return sdist_tests(cache, workdir, f"channels-redis=={version}", f"channels[_-]redis-{version}.tar.gz")


def run(
    tests: Path, name: str, target: dict[str, Any], only: list[str] | None = None
) -> tuple[int, set[str], str]:
    """channels_redis's suite (or ``only`` these test ids) on ``target``: (tests run or -1, the failed test
    ids, the output)."""
    args = [
        "-p", "no:django", "-p", "channels_overlay", "-o", "asyncio_mode=auto",
        "-o", "asyncio_default_fixture_loop_scope=function",
        "--timeout=60", "--tb=short",
        *(only or [*[f"--ignore={path}" for path in IGNORED], "tests"]),
    ]  # fmt: skip
    env = {"CHANNELS_REDIS_SUITE": json.dumps(target)}
    return pytest_run(tests.parent, name, env, args, quiet=bool(only))
