"""`make demo ARGS=--once`: the example site on the stand-ins, end to end, in a fresh process."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run_fresh

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_walkthrough():
    out = run_fresh([str(ROOT / "example_project" / "demo.py"), "--once"], cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "5 of 5 healthy." in out.stdout
    assert "Walkthrough passed." in out.stdout
    assert "✗" not in out.stdout
