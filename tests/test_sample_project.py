"""A user's project (tests/sample_project: its own settings on SQLite) runs its tests on the shipped fixtures,
in one process and with pytest-xdist's two workers (each worker starts its own stand-ins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run_fresh

SAMPLE = Path(__file__).parent / "sample_project"


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist -n 2"])
def test_sample_project_passes(workers):
    done = run_fresh(["-m", "pytest", "-q", *workers], cwd=SAMPLE, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "4 passed" in done.stdout, done.stdout[-2000:]
