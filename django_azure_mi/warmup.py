"""Warm-up: every configured service's token, and its first connections, before the first request.

``AZURE_MANAGED_IDENTITY["WARM_UP"]``:

* ``False`` (default): nothing happens until a request needs a token;
* ``"tokens"``: when the app is ready, a background thread fetches each configured service's token (one
  request per scope and identity). Safe in a gunicorn ``--preload`` master: forked workers inherit the
  tokens and make no request of their own;
* ``True``: the tokens, then the first connections, as the readiness probe makes them (a database
  connection, or the pool's, a ``PING`` into a cache's pool, a container's properties: each service's
  ``service.py`` says). Not in a process that forks afterwards: a pooled connection must not be shared across
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
    """``{"postgres 'default'": provider, ...}``: the token provider of each configured service that is
    warmed up (no network; building them constructs no connection)."""
    from . import probes, services

    found: dict[str, Any] = {}
    for target in probes.targets(purpose="warm"):
        provide = services.get(target.service).provider
        provider = provide(target) if provide is not None else None
        if provider is not None:
            found[f"{target.service} {target.alias!r}"] = provider
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
        selected = probes.targets(purpose="warm")

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
