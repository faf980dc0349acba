"""Warm-up: every configured service's token, and its first connections, before the first request.

``AZURE_MANAGED_IDENTITY["WARM_UP"]``:

* ``False`` (default): nothing happens until a request needs a token;
* ``"tokens"``: when the app is ready, a background thread fetches each configured service's token (one
  request per scope and identity). Safe in a gunicorn ``--preload`` master: forked workers inherit the
  tokens and make no request of their own;
* ``True``: the tokens, then the first connections, as ``azure_check``'s shallow probe makes them (a
  database connection, or the pool's, a Redis ``PING`` into the cache's pool, the storage container's
  properties). Not in a process that forks afterwards: a pooled connection must not be shared across
  fork. With ``--preload`` use ``"tokens"`` and call :func:`warm_up` from gunicorn's ``post_fork`` hook.

A warm-up failure is logged (``django_azure_mi.warmup``) and changes nothing else: the first request then
fetches what it needs, as without warm-up.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("django_azure_mi.warmup")


@dataclass
class WarmUp:
    """What one warm-up did: the services whose tokens it asked for, and per service the error it met."""

    connections: bool
    tokens: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)


def providers() -> dict[str, Any]:
    """``{"database 'default'": provider, ...}``: the token provider of each configured service (no network;
    building them constructs no connection)."""
    from django.conf import settings
    from django.core.files.storage import storages
    from django.db import connections

    from . import probes

    found: dict[str, Any] = {}
    for target in probes.targets(keyvault=False, celery=False):
        name = f"{target.service} {target.alias!r}"
        if target.service == "database":
            database: Any = connections[target.alias]  # our DatabaseWrapper (ENGINE checked by targets())
            identity = database.managed_identity
            if identity is not None:
                found[name] = identity.provider
        elif target.service == "cache":
            from .cache.auth import OPTION, parse_options

            raw = (settings.CACHES[target.alias].get("OPTIONS") or {}).get(OPTION)
            found[name] = parse_options(raw, f"CACHES[{target.alias!r}]['OPTIONS']").provider
        elif target.service == "storage":
            storage: Any = storages[target.alias]  # our backend (BACKEND checked by targets())
            found[name] = storage.binding.provider
    return found


def warm_up(*, connections: bool = True, wait: bool = False, timeout: float | None = None) -> WarmUp:
    """Ask for every configured service's missing token now (each provider's own worker fetches it, all in
    parallel) and, with ``connections``, open the first connections in the background (``probes.start``:
    the probes' shallow checks). With ``wait``, return when done, or after ``timeout`` (default ``TIMEOUT``).
    Nothing here starts a thread of its own: renewals run on the Refresher, probes on the probes' threads."""
    from . import probes, runtime

    result = WarmUp(connections)
    limit = runtime.get().config.timeout if timeout is None else timeout
    started = time.monotonic()
    try:
        found = providers()
    except Exception as exc:  # a setting the system checks report: the first request will say it too
        result.errors["settings"] = f"{type(exc).__name__}: {exc}"
        _finish(result, started)
        return result
    for name, provider in found.items():
        result.tokens.append(name)
        if provider.expires_on is None:  # none cached (nor inherited from a warmed-up parent)
            provider.refresh()
    if connections and found:
        selected = probes.targets(keyvault=False, celery=False)

        def finished(probed: list[probes.Result]) -> None:
            failed = {f"{r.service} {r.alias!r}": r.error or "failed" for r in probed if not r.ok}
            result.errors.update(failed)
            _finish(result, started)

        if wait:
            finished(probes.run(selected, timeout=limit, deep=False))
        else:
            probes.start(selected, timeout=limit, deep=False, done=finished)
        return result
    if wait:
        for name, provider in found.items():
            try:
                provider.current()  # waits at most TIMEOUT for this token
            except Exception as exc:
                result.errors[name] = f"{type(exc).__name__}: {exc}"
    _finish(result, started)
    return result


def _finish(result: WarmUp, started: float) -> None:
    elapsed = time.monotonic() - started
    what = ", ".join(result.tokens) or "nothing configured"
    if result.errors:
        logger.warning("warm-up: %s; failed: %s (%.2fs)", what, result.errors, elapsed)
    else:
        step = "tokens and first connections ready" if result.connections else "tokens asked for"
        logger.info("warm-up: %s; %s (%.2fs)", what, step, elapsed)
    result.done.set()
