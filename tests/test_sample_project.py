"""A user's project (tests/sample_project: its own settings on SQLite) runs its tests on the shipped fixtures,
in one process and with pytest-xdist's two workers (each worker starts its own stand-ins): the docs'
fixture patterns, and its django_db tests on pytest-django's test database created on the stand-in."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .conftest import run_fresh

SAMPLE = Path(__file__).parent / "sample_project"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist -n 2"])
def test_sample_project_passes(workers):
    done = run_fresh(["-m", "pytest", "-q", *workers], cwd=SAMPLE, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "6 passed" in done.stdout, done.stdout[-2000:]


def test_the_docs_show_the_session_database_pattern():
    """docs/testing.md's django_db pattern is the sample project's conftest.py and test_models.py,
    verbatim."""
    page = (SAMPLE.parent.parent / "docs" / "testing.md").read_text()
    for name in ("conftest.py", "test_models.py"):
        code = (SAMPLE / name).read_text().strip()
        assert f"```python\n# {name}\n{code}\n```" in page, f"docs/testing.md's copy of {name} drifted"


def test_azure_databases_with_django_db_is_refused(tmp_path):
    """The two database fixtures point at different databases: a test that asks for both gets told."""
    for name in ("pytest.ini", "sample_settings.py"):
        shutil.copy(SAMPLE / name, tmp_path / name)
    (tmp_path / "test_both.py").write_text(
        "import pytest\n\n\n@pytest.mark.django_db\ndef test_both(azure_databases):\n    azure_databases()\n"
    )
    done = run_fresh(["-m", "pytest", "-q"], cwd=tmp_path, timeout=120)
    assert done.returncode != 0
    assert "drop @pytest.mark.django_db from this test" in done.stdout + done.stderr, done.stdout[-2000:]
