"""``TOKEN_CACHE_DIR``: one token per file in a 0700 directory, shared by the processes of one host."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator

from azure.core.credentials import AccessTokenInfo

from .errors import Problem, TokenCacheError
from .token import Token

logger = logging.getLogger("django_azure_mi.tokens")


class FileCache:
    """One token per file in a 0700 directory: 0600 files, atomic replace, an flock against stampedes."""

    def __init__(self, directory: str, key: str) -> None:
        self.directory = directory
        self.hits = 0  # tokens another process had renewed
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        self.path = os.path.join(directory, f"{name}.json")
        self.lock_path = os.path.join(directory, f"{name}.lock")
        self.check_directory()

    def check_directory(self) -> None:
        check_cache_dir(self.directory)
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise TokenCacheError(_problem(self.directory, f"cannot be created ({exc.strerror})")) from None
        check_cache_dir(self.directory)

    @contextlib.contextmanager
    def locked(self, timeout: float) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        logger.warning(
                            "token cache lock %s busy for %.0fs; going on without it", self.lock_path, timeout
                        )
                        break
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # releases the flock

    def read(self) -> tuple[AccessTokenInfo, float] | None:
        """The stored token and when it was acquired, or None when missing, corrupt or expired."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("token cache file %s unreadable (%s); ignoring it", self.path, type(exc).__name__)
            return None
        try:
            with os.fdopen(fd, "rb") as fh:
                data = json.loads(fh.read(1 << 20))
            token, expires_on, acquired_at = (
                data["token"],
                float(data["expires_on"]),
                float(data["acquired_at"]),
            )
            refresh_on = data.get("refresh_on")
            if not isinstance(token, str) or not token or expires_on <= time.time():
                return None
            info = AccessTokenInfo(token, int(expires_on), refresh_on=int(refresh_on) if refresh_on else None)
            return info, acquired_at
        except (ValueError, KeyError, TypeError, OSError):
            logger.warning("token cache file %s is corrupt; it will be replaced", self.path)
            return None

    def write(self, token: Token) -> None:
        data = {
            "token": token.info.token,
            "expires_on": token.expires_on,
            "refresh_on": token.info.refresh_on,
            "acquired_at": token.acquired_at,
        }
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def acquire(
        self, current: Token | None, fetch: Callable[[Token | None], Token], timeout: float, margin: float
    ) -> Token:
        """Under the host-wide lock: the stored token if another process renewed it, else ``fetch`` and
        store - so N cold processes make one upstream request."""
        with self.locked(timeout):
            stored = self.read()
            if stored is not None:
                candidate = Token(stored[0], stored[1], "file", margin)
                fresher = current is None or candidate.expires_on > current.expires_on
                if fresher and time.time() < candidate.refresh_due:
                    self.hits += 1
                    return candidate
            token = fetch(current)
            try:
                self.write(token)
            except OSError as exc:
                logger.warning("could not write token cache %s: %s", self.path, type(exc).__name__)
            return token


def _problem(directory: str, what: str) -> Problem:
    return Problem(
        "E007",
        f"AZURE_MANAGED_IDENTITY['TOKEN_CACHE_DIR'] = {directory!r} {what}.",
        f"Point the setting at a directory only this user can open (mode 0700; a new one is created so), or "
        f"run `chmod 700 {directory}`; or remove the setting (no sharing between processes).",
    )


def check_cache_dir(directory: str) -> None:
    """Is ``directory`` usable as the token cache? It may not exist yet (it is created 0700); if it does,
    it must be a directory owned by this user and closed to others. No side effects (the system checks)."""
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TokenCacheError(_problem(directory, f"cannot be read ({exc.strerror})")) from None
    if not os.path.isdir(directory):
        raise TokenCacheError(_problem(directory, "is not a directory"))
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise TokenCacheError(
            _problem(
                directory,
                f"must be owned by this user and closed to others (mode 0700); it has owner uid "
                f"{st.st_uid} and mode {oct(st.st_mode & 0o777)}",
            )
        )
