"""Live probes of every configured service, shared by ``manage.py azure_check`` and the readiness view.

Each probe gets the service's token (reporting the identity from its claims: oid, tid, app id, name, expiry -
never the token), then talks to the service. Probes run in parallel daemon threads with a deadline, so a hung
server or identity endpoint turns into a failed result instead of a hung caller. A failure comes with a
diagnosis and a fix for the known cases.

``deep=True`` (azure_check) writes, reads and deletes probe data; ``deep=False`` (readiness, warm-up) only
reads. What each service's probe does is in its package's ``service.py`` (:mod:`django_azure_mi.services`).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import diagnostics, get_token_provider, runtime, services
from .core.errors import describe_error, redact
from .services import Selection, Target

__all__ = ["PROBE_PREFIX", "InFlight", "Result", "Target", "identity_facts", "run", "start", "targets"]

PROBE_PREFIX = "django-azure-mi-probe"  # the names of the keys and blobs a deep probe writes and deletes


@dataclass
class Result:
    """One probed service. ``details`` are service facts; ``identity`` comes from the token's claims."""

    service: str  # a registered service's name (django_azure_mi.services): "postgres", "redis", …
    alias: str
    ok: bool = False
    elapsed_ms: float = 0.0
    identity: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    diagnosis: str | None = None
    fix: str | None = None
    kind: str | None = None  # the failure's kind ("no-role", …): what azure_setup --check matches steps by

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def targets(
    only: Mapping[str, Sequence[str] | bool] | None = None,
    *,
    purpose: str = "check",
    arguments: Mapping[str, Any] | None = None,
) -> list[Target]:
    """What is configured to use a managed identity, of every registered service taking part in
    ``purpose`` (``"check"``, ``"ready"``, ``"warm"``). ``only``: ``{"database": ["default"], "keyvault":
    True}`` selects by ``azure_check``'s options; None selects everything."""
    return services.targets(Selection(only, purpose, dict(arguments or {})))


class InFlight:
    """Probe threads still running, by (service, alias): a runtime component."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.threads: dict[tuple[str, str], tuple[threading.Thread, float]] = {}

    def close(self) -> None:  # a hung probe of one runtime must not mark the next one's
        with self.lock:
            self.threads.clear()

    def after_fork(self) -> None:
        self.lock = threading.Lock()
        self.threads.clear()


def start(
    selected: list[Target], *, timeout: float, deep: bool, done: Callable[[list[Result]], None]
) -> threading.Thread:
    """:func:`run` in the background (warm-up); ``done(results)`` when it returns."""
    thread = threading.Thread(
        target=lambda: done(run(selected, timeout=timeout, deep=deep)), name="probes", daemon=True
    )
    thread.start()
    return thread


def run(selected: list[Target], *, timeout: float = 20.0, deep: bool = True) -> list[Result]:
    """Probe ``selected`` in parallel; every result is back within ``timeout`` seconds.

    A probe still stuck from an earlier run (a server that accepts but never answers) is not started again:
    its result says so, and repeated readiness checks cannot pile up threads."""
    inflight = runtime.get().component("probes", InFlight)
    results = [Result(t.service, t.alias) for t in selected]
    threads: list[threading.Thread | None] = []
    for target, result in zip(selected, results, strict=True):
        key = (target.service, target.alias)
        with inflight.lock:
            stuck = inflight.threads.get(key)
            if stuck is not None and stuck[0].is_alive():
                threads.append(None)
                result.error = f"the previous probe has not answered for {time.monotonic() - stuck[1]:.0f} s"
                _set_failure(result, _timeout(target, timeout))
                continue
            thread = threading.Thread(
                target=_guarded, args=(target, result, deep), name=f"probe-{target.service}", daemon=True
            )
            inflight.threads[key] = (thread, time.monotonic())
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + timeout
    for target, started, result in zip(selected, threads, results, strict=True):
        if started is None:
            continue
        started.join(max(0.0, deadline - time.monotonic()))
        if started.is_alive():
            result.ok = False
            result.elapsed_ms = timeout * 1000
            result.error = f"no answer within {timeout:g} s"
            _set_failure(result, _timeout(target, timeout))
    # snapshots (with their own dicts): a probe thread that answers late cannot change them
    return [dataclasses.replace(r, identity=dict(r.identity), details=dict(r.details)) for r in results]


def _timeout(target: Target, seconds: float) -> diagnostics.ServiceFailure:
    return diagnostics.timeout_failure(services.get(target.service).title, target.where, seconds)


def _set_failure(result: Result, failure: diagnostics.ServiceFailure) -> None:
    result.diagnosis, result.fix, result.kind = failure.diagnosis, failure.fix, failure.kind


def _guarded(target: Target, result: Result, deep: bool) -> None:
    started = time.monotonic()
    try:
        target.probe(result, deep)
        result.ok = True
    except Exception as exc:
        failure = diagnostics.diagnose(target.service, exc, target.where)
        # what happened, once: an adapter's message also carries the diagnosis and fix, shown apart
        said = redact(failure.context) if failure.context else ""
        result.error = f"{type(exc).__name__}: {said}" if said else describe_error(exc, 600)
        _set_failure(result, failure)
    finally:
        result.elapsed_ms = round((time.monotonic() - started) * 1000, 1)


# ---------------------------------------------------------------------------------------------- identity


def identity_facts(scope: str, client_id: str | None) -> dict[str, Any]:
    """Who the token for ``scope`` says we are - from its claims, without the token."""
    provider = get_token_provider(scope, client_id=client_id)
    token = provider.current()
    claims = token.claims
    resource_id = str(claims.get("xms_mirid") or "")
    return {
        "credential": provider.identity,
        "scope": scope,
        "oid": claims.get("oid"),
        "tid": claims.get("tid"),
        "appid": claims.get("appid") or claims.get("azp"),
        "name": resource_id.rstrip("/").rsplit("/", 1)[-1] or None,
        "audience": claims.get("aud"),
        "expires_in_s": int(token.expires_on - time.time()),
    }
