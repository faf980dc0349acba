"""The tests/ directory of an installed package's sdist, fetched with pip (once per version, into a cache)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path


def sdist_tests(cache: Path, workdir: Path, requirement: str, pattern: str) -> Path:
    """Unpack the ``tests/`` of ``requirement``'s sdist (``name==version``) into ``workdir`` and return it.
    ``pattern`` globs the sdist's file name in ``cache`` (its spelling changed over the years, e.g.
    ``[dD]jango-5.2.19.tar.gz``, ``django[_-]redis-7.0.0.tar.gz``)."""
    if not list(cache.glob(pattern)):
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", requirement,
             "-d", str(cache)],
            check=True,
        )  # fmt: skip
    (archive,) = cache.glob(pattern)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/tests/" in m.name]
        tar.extractall(workdir, members=members, filter="data")
    return workdir / members[0].name.split("/")[0] / "tests"
