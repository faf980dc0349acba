"""Fork safety and the per-host token file cache (TOKEN_CACHE_DIR), with real processes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pytest

from django_azure_mi import get_token_provider

from .conftest import STORAGE, STORAGE_RESOURCE, claims, in_child


@pytest.mark.azure_imds(ttl=120)
def test_child_after_fork_refreshes_with_its_own_worker(azure_imds):
    provider = get_token_provider(STORAGE)
    parent_token = provider.get_token(STORAGE).token
    parent_thread = provider._refresher._thread

    # Fork while another thread holds the provider's lock (the classic fork deadlock).
    locked, release = threading.Event(), threading.Event()

    def hold_lock():
        with provider._refresher._lock:
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(5)

    def child():
        cached = provider.get_token(STORAGE).token  # the inherited token, no request, no deadlock
        refreshed = provider.refresh(wait=True, timeout=10)
        new = provider.get_token(STORAGE).token
        return {
            "cached_is_parent": cached == parent_token,
            "refreshed": refreshed,
            "new_differs": new != parent_token,
            "new_worker": provider._refresher._thread is not None
            and provider._refresher._thread is not parent_thread,
        }

    try:
        result = in_child(child)
    finally:
        release.set()
        holder.join()
    assert result == {
        "ok": True,
        "cached_is_parent": True,
        "refreshed": True,
        "new_differs": True,
        "new_worker": True,
    }
    assert azure_imds.request_count(STORAGE_RESOURCE) == 2  # parent's first + child's refresh
    assert provider.get_token(STORAGE).token == parent_token  # the parent is unaffected


@pytest.mark.azure_imds(ttl=120)
def test_child_cold_provider_after_fork(azure_imds):
    provider = get_token_provider(STORAGE)

    def child():
        return {"oid": claims(provider.get_token(STORAGE).token)["oid"]}

    result = in_child(child)
    assert result == {"ok": True, "oid": azure_imds.object_id(None)}


CHILD = textwrap.dedent(
    """
    import hashlib, sys, django
    from django.conf import settings
    settings.configure(INSTALLED_APPS=["django_azure_mi"],
                       AZURE_MANAGED_IDENTITY={"TOKEN_CACHE_DIR": sys.argv[1],
                                               "TIMEOUT": float(sys.argv[2]) if len(sys.argv) > 2 else 15})
    django.setup()
    from django_azure_mi import get_token_provider
    provider = get_token_provider("https://storage.azure.com/.default")
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    token = provider.get_token("https://storage.azure.com/.default").token
    print(hashlib.sha256(token.encode()).hexdigest(), provider.stats["file_hits"], flush=True)
    """
)


def _run_children(n: int, cache_dir: str, timeout: float = 15) -> list[tuple[str, int]]:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, cache_dir, str(timeout)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
            digest, file_hits = out.split()
            results.append((digest, int(file_hits)))
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()


def test_file_cache_four_cold_processes_one_request(azure_imds, tmp_path):
    cache_dir = tmp_path / "tokens"
    hold = azure_imds.hold()  # the first request waits until all four processes are asking
    threading.Timer(1.0, hold.release).start()
    results = _run_children(4, str(cache_dir))
    assert azure_imds.request_count(STORAGE_RESOURCE) == 1
    assert len({digest for digest, _ in results}) == 1
    assert sorted(hits for _, hits in results) == [0, 1, 1, 1]
    assert stat.S_IMODE(os.stat(cache_dir).st_mode) == 0o700
    for path in cache_dir.iterdir():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


@pytest.mark.parametrize("content", ["{not json", '{"token": "x", "expires_on": 1, "acquired_at": 0}', ""])
def test_corrupt_or_expired_cache_file_is_ignored_and_replaced(azure_imds, tmp_path, settings, content):
    cache_dir = tmp_path / "tokens"
    settings.AZURE_MANAGED_IDENTITY = {"TOKEN_CACHE_DIR": str(cache_dir)}
    provider = get_token_provider(STORAGE)
    path = provider._file.path
    with open(path, "w") as fh:
        fh.write(content)
    token = provider.get_token(STORAGE).token
    assert azure_imds.request_count() == 1
    with open(path) as fh:
        stored = json.load(fh)
    assert stored["token"] == token and stored["expires_on"] > time.time()


# ---------------------------------------------------------------------------------------------- faults


def test_a_child_forked_during_a_renewal_holds_no_lock(azure_imds, tmp_path, settings):
    """gunicorn --preload + warm-up + TOKEN_CACHE_DIR: a worker forked while the master's renewal held the
    file lock (its request held at IMDS) kept the lock for its whole life, and every new process on the
    host waited TIMEOUT and failed. The lock is the process's own: the child holds none."""
    cache_dir = tmp_path / "tokens"
    settings.AZURE_MANAGED_IDENTITY = {"TOKEN_CACHE_DIR": str(cache_dir)}
    provider = get_token_provider(STORAGE)
    hold = azure_imds.hold()
    provider.refresh()  # the worker takes the lock and waits at IMDS
    assert hold.wait_arrived(10)
    pid = os.fork()
    if pid == 0:  # a long-lived worker that never renews
        time.sleep(30)
        os._exit(0)
    try:
        hold.release()
        provider.get_token(STORAGE)  # the parent's renewal is done: its lock is released
        ((_, file_hits),) = _run_children(1, str(cache_dir), timeout=3)  # failed after 3 s before
        assert file_hits == 1  # the parent's token, from the file, without waiting for a lock
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def _mint(azure_imds, ttl: float = 600) -> str:
    return azure_imds.mint(STORAGE_RESOURCE, ttl=ttl).token


def _forged(lifetime: float) -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"aud": STORAGE_RESOURCE, "iat": now, "nbf": now, "exp": now + int(lifetime)}, "k" * 32)


def _file(token: str, expires_on: str, acquired_at: str = "NOW", refresh_on: str = "null") -> Callable:
    """A cache file's text; the numbers are JSON text ("NOW" is replaced by the time), so that
    ``Infinity`` and ``1e400`` can be written."""

    def make(planted: str, now: float) -> str:
        fill = {"NOW": repr(now), "PLANTED": planted}  # NOW first: a token's base64 may contain "NOW"
        values = [token, expires_on, acquired_at, refresh_on]
        for key, value in fill.items():
            values = [v.replace(key, value) for v in values]
        t, e, a, r = values
        e, a = (str(eval(x, {"NOW": now})) if "+" in x else x for x in (e, a))  # "NOW + 500"
        return f'{{"token": "{t}", "expires_on": {e}, "refresh_on": {r}, "acquired_at": {a}}}'

    return make


# (file content, what must happen): "replaced" = ignored, one IMDS request, the file rewritten;
# "served" = the file's token is used (after the same checks a fresh token passes), no IMDS request.
TAMPERED = {
    "expires_on Infinity": (_file("PLANTED", "Infinity"), "replaced"),
    "expires_on 1e400": (_file("PLANTED", "1e400"), "replaced"),
    "refresh_on 1e400": (_file("PLANTED", "NOW + 500", refresh_on="1e400"), "served"),
    "not a JWT": (_file("opaque-" + "x" * 40, "NOW + 500"), "replaced"),
    "100-year expiry, forged JWT": (_file(_forged(3.2e9), "NOW + 3.2e9"), "replaced"),
    "1-second lifetime": (_file("PLANTED", "NOW + 1"), "replaced"),
    "200 kB token": (_file("PLANTED" + "A" * 200_000, "NOW + 500"), "replaced"),
    "acquired in the future": (_file("PLANTED", "NOW + 500", acquired_at="NOW + 1e9"), "served"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_cache_files_pass_the_checks_of_fresh_tokens(case, azure_imds, tmp_path, settings, caplog):
    make, expected = TAMPERED[case]
    cache_dir = tmp_path / "tokens"
    settings.AZURE_MANAGED_IDENTITY = {"TOKEN_CACHE_DIR": str(cache_dir)}
    provider = get_token_provider(STORAGE)
    planted = _mint(azure_imds)
    with open(provider._file.path, "w") as fh:
        fh.write(make(planted, time.time()))
    os.chmod(provider._file.path, 0o600)
    token = provider.get_token(STORAGE)
    if expected == "served":
        assert token.token == planted and azure_imds.request_count(STORAGE_RESOURCE) == 0
        assert token.expires_on <= claims(planted)["exp"] + 2
    else:
        assert token.token != planted and azure_imds.request_count(STORAGE_RESOURCE) == 1
        with open(provider._file.path) as fh:
            assert json.load(fh)["token"] == token.token  # replaced


@pytest.mark.parametrize("where", ["token path", "lock path"])
@pytest.mark.parametrize("entry", ["fifo", "symlink", "directory", "world-readable file"])
def test_odd_entries_in_the_cache_dir_cost_a_request_not_an_outage(
    where, entry, azure_imds, tmp_path, settings
):
    """A FIFO at the token path once blocked the worker forever; a symlink at the lock path gave ELOOP on
    every call (an outage). Only private regular files are used; anything else is ignored or replaced."""
    cache_dir = tmp_path / "tokens"
    settings.AZURE_MANAGED_IDENTITY = {"TOKEN_CACHE_DIR": str(cache_dir), "TIMEOUT": 5}
    provider = get_token_provider(STORAGE)
    path = provider._file.path if where == "token path" else provider._file.lock_path
    if entry == "fifo":
        os.mkfifo(path, 0o600)
    elif entry == "symlink":
        os.symlink(str(tmp_path / "elsewhere"), path)
    elif entry == "directory":
        os.mkdir(path, 0o700)
    else:
        with open(path, "w") as fh:
            fh.write(
                json.dumps(
                    {"token": _mint(azure_imds), "expires_on": time.time() + 500, "acquired_at": time.time()}
                )
            )
        os.chmod(path, 0o644)
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(token=provider.get_token(STORAGE).token), daemon=True
    )
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the worker blocked on the cache directory"
    assert "token" in result
    assert not (tmp_path / "elsewhere").exists()  # nothing written through the symlink
    if entry != "directory":
        assert stat.S_ISREG(os.lstat(path).st_mode) and stat.S_IMODE(os.lstat(path).st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a mount namespace")
def test_a_read_only_cache_dir_falls_back_to_memory_with_one_warning(azure_imds, tmp_path):
    """A read-only container root: opening the lock file failed with EROFS on every call (an outage with a
    valid token file and a healthy IMDS). Now: one WARNING, tokens from memory (and the file, when it
    holds a valid one), W007 from the checks."""
    import shutil

    if not shutil.which("unshare"):
        pytest.skip("no unshare(1)")
    cache_dir = tmp_path / "tokens"
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(
            """
        import logging, sys, django
        from django.conf import settings
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        settings.configure(INSTALLED_APPS=["django_azure_mi"],
                           AZURE_MANAGED_IDENTITY={"TOKEN_CACHE_DIR": sys.argv[1], "TIMEOUT": 5})
        django.setup()
        from django_azure_mi import get_token_provider
        from django_azure_mi.checks import check_settings
        provider = get_token_provider("https://storage.azure.com/.default")
        for _ in range(3):
            provider.get_token("https://storage.azure.com/.default")
        provider.refresh(wait=True)
        print(sorted(m.id for m in check_settings()), provider.file_cache_problem, provider.stats["requests"])
        """
        )
    )
    _run_children(1, str(cache_dir))  # a valid token file, written while the directory was writable
    command = (
        f"mount --bind {cache_dir} {cache_dir} && mount -o remount,bind,ro {cache_dir} && "
        f"{sys.executable} {script} {cache_dir}"
    )
    found = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    if "mount:" in found.stderr and found.returncode:
        pytest.skip(f"no read-only bind mount here: {found.stderr.strip()}")
    assert found.returncode == 0, found.stderr
    assert "django_azure_mi.W007" in found.stdout, found.stdout
    assert "Read-only file system" in found.stdout, found.stdout
    assert found.stderr.count("keeps its tokens in memory only") == 1, found.stderr
