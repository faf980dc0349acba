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
                       AZURE_MANAGED_IDENTITY={"TOKEN_CACHE_DIR": sys.argv[1]})
    django.setup()
    from django_azure_mi import get_token_provider
    provider = get_token_provider("https://storage.azure.com/.default")
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    token = provider.get_token("https://storage.azure.com/.default").token
    print(hashlib.sha256(token.encode()).hexdigest(), provider.stats["file_hits"], flush=True)
    """
)


def _run_children(n: int, cache_dir: str) -> list[tuple[str, int]]:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, cache_dir],
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
