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


@pytest.mark.slow
def test_the_demo_stops_cleanly_on_sigterm():
    """`docker stop`, an IDE's stop button, systemd: SIGTERM stops the demo as Ctrl-C does, leaving no
    stand-in running (Postgres detaches from the demo: found by its data directory) and no temporary
    directory behind. (Before, postgres, redis-server and Azurite kept running and five folders stayed.)"""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    from .test_local import alive, descendants, processes_under, read_until

    # every stand-in's directory under one of ours (the user postgres must reach it: not pytest's tmp_path)
    tmp_path = Path(tempfile.mkdtemp(prefix="django-azure-mi-demo-test-"))
    tmp_path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "example_project" / "demo.py"), "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = read_until(proc.stdout, lambda line: "Press Ctrl-C to stop." in line, 300)
        assert "Press Ctrl-C to stop." in lines[-1], "".join(lines)[-3000:]
        running = descendants(proc.pid) | set(processes_under([str(tmp_path)]))
        assert len(running) >= 3, running  # postgres, redis-server(s), Azurite (node)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stdout.read()[-3000:]
        deadline = time.monotonic() + 10
        while alive(running) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert alive(running) == set()
        assert processes_under([str(tmp_path)]) == []
        # (other libraries may leave theirs: azure-monitor's exporter keeps a Microsoft-AzureMonitor-… folder)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("django-azure-mi-")] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp_path, ignore_errors=True)
