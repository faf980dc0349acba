"""`make demo ARGS=--once`: the example site on the stand-ins, end to end, in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_walkthrough():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "example_project" / "demo.py"), "--once"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "4 of 4 healthy." in out.stdout
    assert "Walkthrough passed." in out.stdout
    assert "✗" not in out.stdout
