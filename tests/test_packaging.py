"""The distribution is a real library's: an sdist whose own tests run, SPDX license metadata, a changelog,
and classifiers that match what CI runs (tox.ini)."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from .conftest import run_fresh

ROOT = Path(__file__).parent.parent
GENERATED = (".git", ".venv", ".tox", "node_modules", "*.egg-info", "__pycache__", ".*_cache", "dist")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    if os.environ.get("DJANGO_AZURE_MI_DIST"):  # `make dist`: the files a release uploads
        (archive,) = Path(os.environ["DJANGO_AZURE_MI_DIST"]).glob("*.tar.gz")
        return archive
    # Built from a copy of the checkout: setuptools writes its egg-info into the source tree, and `make test`
    # runs lanes side by side (each may build at the same time)
    tree = tmp_path_factory.mktemp("tree") / "src"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(*GENERATED))
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(tree)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Deprecat" not in done.stdout + done.stderr, "setuptools warns about our metadata"
    (archive,) = out.glob("*.tar.gz")
    return archive


@pytest.mark.slow
def test_the_sdist_carries_its_tests_and_runs_them(sdist, tmp_path):
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    (root,) = tmp_path.iterdir()
    for needed in (
        "LICENSE",
        "CHANGELOG.md",
        "tests/__init__.py",
        "tests/conftest.py",
        "tests/settings.py",
        "tests/testapp/models.py",
        "tests/sample_project/pytest.ini",
        "example_project/demo.py",
        "tools/azurite/package-lock.json",
        "docs/architecture.md",
        "docs/security.md",
        "docs/getting-started.md",
        "mkdocs.yml",
        ".readthedocs.yaml",
        "Makefile",
        "tox.ini",
    ):
        assert (root / needed).is_file(), f"the sdist lacks {needed}"
    assert not list(root.rglob("__pycache__")) and not list(root.rglob("node_modules"))
    where = run_fresh(["-c", "import django_azure_mi; print(django_azure_mi.__file__)"], cwd=root, timeout=60)
    assert where.stdout.startswith(str(root)), where.stdout  # the sdist's own code, not the checkout's
    done = run_fresh(
        ["-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider", "tests/test_conf.py"],
        cwd=root,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.search(r"\d+ passed", done.stdout), done.stdout[-2000:]


def test_metadata_matches_what_ci_runs(sdist):
    with tarfile.open(sdist) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")]
        info = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
    assert "License-Expression: MIT" in info and "License-File: LICENSE" in info
    assert "Requires-Python: >=3.11" in info
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    envs = tox["tox"]["envlist"].replace(",", " ").split()
    pythons = {f"{e[2]}.{e[3:5]}" for e in envs if re.match(r"py3\d+-django\d+", e)}
    djangos = {f"{e[-2]}.{e[-1]}" for e in envs if re.match(r"py3\d+-django\d+", e)}
    assert pythons == set(re.findall(r"Programming Language :: Python :: (3\.\d+)$", info, re.M))
    assert djangos == set(re.findall(r"Framework :: Django :: (\d\.\d)$", info, re.M))
    assert f"Requires-Dist: Django>={min(djangos)}" in info
    assert re.search(r"^Project-URL: Changelog, ", info, re.M)


@pytest.fixture(scope="module")
def uv_wheel(sdist, tmp_path_factory) -> tuple[str, Path]:
    """(uv, the wheel built from the sdist once for the module's clean-venv tests)."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (make installs it with the dev extra)")
    if os.environ.get("DJANGO_AZURE_MI_DIST"):  # `make dist`: the wheel a release uploads
        (wheel,) = Path(os.environ["DJANGO_AZURE_MI_DIST"]).glob("*.whl")
        return uv, wheel
    wheels = tmp_path_factory.mktemp("wheels")
    built = subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(wheels), str(sdist)], capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("*.whl")
    return uv, wheel


# What each extra enables: the modules that must import in a venv with only the package and that extra
EXTRAS = {
    "postgres": ["django_azure_mi.backends.postgresql.base"],
    "redis": ["django_azure_mi.cache", "django_azure_mi.cache.backend", "django_redis"],
    "storage": ["django_azure_mi.storage"],
    "keyvault": ["django_azure_mi.keyvault"],
    "celery": ["django_azure_mi.celery.transport", "django_azure_mi.celery.backend"],
    "channels": ["django_azure_mi.channels"],
    "testing": ["django_azure_mi.testing.imds", "django_azure_mi.testing.redis"],
}


@pytest.mark.slow
@pytest.mark.once
def test_each_extra_installs_alone_and_imports_what_it_enables(uv_wheel, tmp_path):
    """Each extra in a clean venv of its own (uv; no pytest, which happens to bring `packaging`): every
    module it enables imports. The celery extra lacked what kombu's Redis transport imports."""
    uv, wheel = uv_wheel
    failures = {}
    for extra, modules in EXTRAS.items():
        venv = tmp_path / extra
        python = venv / "bin" / "python"
        steps = [
            [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
            [uv, "pip", "install", "--quiet", "--python", str(python), f"{wheel}[{extra}]"],
            [str(python), "-c", _IMPORT.format(modules=modules)],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                failures[extra] = (done.stdout + done.stderr)[-1500:]
                break
    assert failures == {}, failures


_IMPORT = """
import importlib
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=["django_azure_mi"])
django.setup()
for name in {modules!r}:
    importlib.import_module(name)
"""


def readme_quick_start() -> str:
    """The README's quick-start settings block, verbatim (the docs site includes the same lines)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quick start:.*?-->\n```python\n(.*?)\n```", readme, re.S)
    assert block, "README.md lost its quick-start settings block"
    return block[1]


def test_the_readme_quick_start_is_valid_settings_code():
    """Fast: the block compiles and ends in the one-variable switch to the stand-ins; the docs' getting
    started page shows the same block."""
    code = readme_quick_start()
    page = (ROOT / "docs" / "getting-started.md").read_text()
    assert f"```python\n{code}\n```" in page, "docs/getting-started.md's quick start differs from README's"
    compile(code, "README.md", "exec")
    assert 'INSTALLED_APPS += ["django_azure_mi"]' in code
    assert "globals().update(stand_in_settings())" in code


@pytest.mark.slow
@pytest.mark.once
def test_a_new_project_on_the_built_wheel_reaches_a_working_azure_check(uv_wheel, tmp_path):
    """The first hour, from the wheel: a clean venv with `django-azure-mi[all]`, a new `startproject`, the
    README's quick-start settings appended to its settings.py (Azure settings, then the switch to the
    stand-ins), the stand-ins CLI started with a .env file, and
    `manage.py azure_check` with that file's variables: every service healthy. (The README pointed a wheel
    user at example_project/, which is not in the wheel, and four CA settings had to be guessed.)"""
    import signal

    from .test_local import read_until

    uv, wheel = uv_wheel
    venv = tmp_path / "venv"
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "AZURE_", "PYTHON"))}
    for step in (
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        [uv, "pip", "install", "--quiet", "--python", python, f"{wheel}[all]"],
        [str(venv / "bin" / "django-admin"), "startproject", "mysite"],
    ):
        done = subprocess.run(step, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
        assert done.returncode == 0, (step, done.stdout[-1500:], done.stderr[-1500:])
    settings = tmp_path / "mysite" / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + "\n" + readme_quick_start())
    env["AZURITE_BIN"] = str(ROOT / "tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob")
    env_file = tmp_path / ".env.azure"
    cli = subprocess.Popen(
        [python, "-m", "django_azure_mi.testing", "--env-file", str(env_file)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = read_until(cli.stderr, lambda line: line.startswith("# ready"), 180)
        assert lines[-1].startswith("# ready"), "".join(lines)
        import dotenv

        site_env = {**env, **{k: v for k, v in dotenv.dotenv_values(env_file).items() if v is not None}}
        check = subprocess.run(
            [python, "manage.py", "azure_check"],
            cwd=tmp_path / "mysite",
            env=site_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
        assert re.search(r"(\d+) of \1 healthy", check.stdout), check.stdout[-2000:]
    finally:
        cli.send_signal(signal.SIGTERM)
        cli.wait(60)
