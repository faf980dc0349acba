"""``TOKEN_CACHE_DIR``: one token per file in a 0700 directory, shared by the processes of one host.

The cache is an optimisation: whatever goes wrong with it (a read-only file system, a file someone put
there, a fork in the middle of a renewal) costs at most a request to the identity endpoint, never an
outage. The rules (docs/security.md, "The token cache directory"):

* the lock is a POSIX record lock (``lockf``), owned by the process that took it: a child forked while
  the parent renews holds no lock it did not take; its descriptor is close-on-exec;
* files are opened without following symlinks and without blocking (a FIFO can't stall a worker), and
  only a regular file owned by this user and closed to others (checked on the open descriptor) is used;
  another entry at the lock path is removed and recreated;
* a token read from a file passes the same checks as one from the identity endpoint
  (:func:`~.token.checked`); a file that fails them is ignored and replaced;
* a directory that can't be used (read-only file system, gone, its permissions changed) turns the cache
  off for this process with one WARNING: tokens are then kept in memory only (``unusable`` says why;
  ``check`` and ``azure_check`` report it);
* the directory and its parents are checked at start (E007), as ssh checks its files: a parent others
  can write without the sticky bit could swap the directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator

from azure.core.credentials import AccessTokenInfo

from .clock import SYSTEM, Clock
from .errors import Problem, TokenCacheError
from .token import MAX_TOKEN_LENGTH, Token, checked

logger = logging.getLogger("django_azure_mi.tokens")

_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_FILE = 4 * MAX_TOKEN_LENGTH  # a token and its times, with room to spare


class FileCache:
    """One token per file in a 0700 directory: 0600 files, atomic replace, a process-owned lock against
    stampedes, and a fallback to memory when the directory can't be used."""

    def __init__(self, directory: str, key: str, clock: Clock = SYSTEM) -> None:
        self.directory, self.clock = directory, clock  # the clock judges tokens; the lock waits in real time
        self.hits = 0  # tokens another process had renewed
        self.unusable: str | None = None  # why this process keeps its tokens in memory only
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        self.path = os.path.join(directory, f"{name}.json")
        self.lock_path = os.path.join(directory, f"{name}.lock")
        check_cache_dir(directory)  # security problems are configuration errors (E007)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            self._give_up(f"it cannot be created ({exc.strerror})")

    # ------------------------------------------------------------------ the one entry point

    def acquire(
        self, current: Token | None, fetch: Callable[[Token | None], Token], timeout: float, margin: float
    ) -> Token:
        """Under the host-wide lock: the stored token if another process renewed it, else ``fetch`` and
        store - so N cold processes make one upstream request. Without a usable directory: ``fetch``."""
        if self.unusable is None:
            try:
                check_cache_dir(self.directory)  # again: it may have changed since the start
            except TokenCacheError as exc:
                self._give_up(exc.problem.problem)
        if self.unusable is not None:
            return fetch(current)
        with self._locked(timeout):
            candidate = self._read(margin)
            if candidate is not None:
                fresher = current is None or candidate.expires_on > current.expires_on
                if fresher and self.clock.time() < candidate.refresh_due:
                    self.hits += 1
                    return candidate
            token = fetch(current)
            if self.unusable is None:
                self._write(token)
            return token

    # ------------------------------------------------------------------ lock

    @contextlib.contextmanager
    def _locked(self, timeout: float) -> Iterator[None]:
        fd = self._open_lock()
        if fd is None:
            yield  # no lock to be had: go on without it (the directory is given up)
            return
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a POSIX lock: never inherited by fork
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EACCES, errno.EAGAIN):
                        raise
                    if time.monotonic() >= deadline:
                        logger.warning(
                            "token cache lock %s busy for %.0fs; going on without it", self.lock_path, timeout
                        )
                        break
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _open_lock(self) -> int | None:
        """The lock file's descriptor: a regular file of ours. Anything else at that path (a symlink, a
        FIFO, another user's file) is removed and the file made anew, once; None when that fails."""
        for attempt in (1, 2):
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | _OPEN, 0o600)
            except OSError as exc:
                if attempt == 1 and exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                    self._remove(self.lock_path, exc.strerror)
                    continue
                self._give_up(f"its lock file cannot be opened ({exc.strerror})")
                return None
            why = _not_ours(fd)
            if why is None:
                return fd
            os.close(fd)
            if attempt == 1:
                self._remove(self.lock_path, why)
        self._give_up("its lock file cannot be made a private regular file")
        return None

    def _remove(self, path: str, why: str | None) -> None:
        logger.warning("token cache: %s is not a private regular file (%s); replacing it", path, why)
        with contextlib.suppress(OSError):
            os.unlink(path)

    # ------------------------------------------------------------------ token file

    def _read(self, margin: float) -> Token | None:
        """The stored token, checked as one from the identity endpoint is; None when missing, not a
        private regular file, corrupt, expired or otherwise refused (then it is replaced)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | _OPEN)
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("token cache file %s unusable (%s); it will be replaced", self.path, exc.strerror)
            return None
        try:
            why = _not_ours(fd)
            if why is not None:
                logger.warning(
                    "token cache file %s is not a private regular file (%s); ignored", self.path, why
                )
                return None
            raw = os.read(fd, _MAX_FILE + 1)
        except OSError as exc:
            logger.warning(
                "token cache file %s unreadable (%s); it will be replaced", self.path, exc.strerror
            )
            return None
        finally:
            os.close(fd)
        try:
            if len(raw) > _MAX_FILE:
                raise ValueError(f"larger than {_MAX_FILE} bytes")
            data = json.loads(raw, parse_constant=_no_constant)
            refresh_on = data.get("refresh_on")
            info = AccessTokenInfo(data["token"], data["expires_on"], refresh_on=refresh_on)
            return checked(
                info, data["acquired_at"], "file", margin, "the token cache file", self.clock.time()
            )
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            reason = str(exc) if isinstance(exc, ValueError) else type(exc).__name__
            logger.warning("token cache file %s refused (%s); it will be replaced", self.path, reason[:200])
            return None

    def _write(self, token: Token) -> None:
        data = {
            "token": token.info.token,
            "expires_on": token.expires_on,
            "refresh_on": token.info.refresh_on,
            "acquired_at": token.acquired_at,
        }
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")  # mode 0600
        except OSError as exc:
            self._give_up(f"it cannot be written ({exc.strerror})")
            return
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            os.replace(tmp, self.path)  # replaces whatever was at the path (a FIFO, a tampered file)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            logger.warning("could not write token cache %s: %s", self.path, exc.strerror)

    def _give_up(self, why: str) -> None:
        if self.unusable is None:
            self.unusable = why
            logger.warning(
                "AZURE_MANAGED_IDENTITY['TOKEN_CACHE_DIR'] = %r: %s; this process keeps its tokens in memory "
                "only (one identity request per process instead of per host)",
                self.directory,
                why,
            )


def _not_ours(fd: int) -> str | None:
    """Why the open file ``fd`` may not be used (checked on the descriptor, not the path), or None."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}"
    if st.st_mode & 0o077:
        return f"mode {oct(st.st_mode & 0o777)}"
    return None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a time")


def _problem(directory: str, what: str) -> Problem:
    return Problem(
        "E007",
        f"AZURE_MANAGED_IDENTITY['TOKEN_CACHE_DIR'] = {directory!r} {what}.",
        f"Point the setting at a directory only this user can open (mode 0700; a new one is created so), or "
        f"run `chmod 700 {directory}`; or remove the setting (no sharing between processes).",
    )


def check_cache_dir(directory: str) -> None:
    """Is ``directory`` safe as the token cache? It may not exist yet (it is created 0700); if it does, it
    must be a directory owned by this user and closed to others; and no existing parent may be writable by
    others without the sticky bit (they could replace the directory). No side effects (the system checks
    call it)."""
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise TokenCacheError(_problem(directory, f"cannot be read ({exc.strerror})")) from None
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise TokenCacheError(_problem(directory, "is not a directory"))
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise TokenCacheError(
                _problem(
                    directory,
                    f"must be owned by this user and closed to others (mode 0700); it has owner uid "
                    f"{st.st_uid} and mode {oct(st.st_mode & 0o777)}",
                )
            )
    parent = os.path.dirname(os.path.realpath(directory))
    while True:
        try:
            pst = os.stat(parent)
        except OSError:
            pst = None
        if pst is not None and pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX:
            raise TokenCacheError(
                _problem(
                    directory,
                    f"is under {parent!r}, which others can write (mode {oct(pst.st_mode & 0o7777)}) without "
                    "the sticky bit: they could replace the cache directory",
                )
            )
        up = os.path.dirname(parent)
        if up == parent:
            return
        parent = up


def cache_dir_state(directory: str) -> str | None:
    """Why tokens would be kept in memory only (a read-only file system, no write access), or None: the
    system checks' warning (W007). No side effects."""
    probe = directory
    while not os.path.exists(probe):
        up = os.path.dirname(probe)
        if up == probe:
            return None
        probe = up
    try:
        if os.statvfs(probe).f_flag & os.ST_RDONLY:
            return f"{probe!r} is on a read-only file system"
    except OSError:
        return None
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe!r} is not writable by this user"
    return None
