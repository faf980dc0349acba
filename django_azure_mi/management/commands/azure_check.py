"""``manage.py azure_check``: get each configured service's token and talk to the service.

Exit status 0 only when everything checked is healthy; every probe has a deadline (``--timeout``), so the
command never hangs and can serve as a container startup probe. Tokens never appear in the output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import probes, runtime, services


class Command(BaseCommand):
    help = (
        "Check every service configured for a managed identity: acquire its token, report the identity, "
        "probe the service, and explain failures. Exit 0 only when all are healthy."
    )
    requires_system_checks: Any = []  # report misconfiguration as results, not as a SystemCheckError

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON document")
        for argument in _arguments():  # each service's own (--database ALIAS, --keyvault, …)
            if argument.setting is not None:
                parser.add_argument(
                    f"--{argument.name}", action="append", metavar="ALIAS", help=argument.help
                )
            elif not argument.selects:
                parser.add_argument(
                    f"--{argument.name}", action="append", metavar=argument.name.upper(), help=argument.help
                )
            else:
                parser.add_argument(f"--{argument.name}", action="store_true", help=argument.help)
        parser.add_argument(
            "--timeout", type=float, default=20.0, help="seconds before a probe counts as failed (default 20)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        selecting = [a for a in _arguments() if a.selects]
        only = {a.name: options[a.dest] for a in selecting if options[a.dest]} or None
        arguments = {a.name: options[a.dest] for a in _arguments() if not a.selects}
        selected = probes.targets(only, arguments=arguments)
        self._check_selection(only or {}, selected)
        started = time.monotonic()
        with _held_logs() as held:  # a refused sign-in also logs its message: the report shows it once
            results = probes.run(selected, timeout=options["timeout"])
        healthy = all(r.ok for r in results)
        cache_problems = sorted(
            {p.file_cache_problem for p in runtime.get().providers() if p.file_cache_problem}
        )
        if options["json"]:
            document = {
                "ok": healthy,
                "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
                "results": [r.as_dict() for r in results],
                "token_cache_problems": cache_problems,
            }
            self.stdout.write(json.dumps(document, indent=2, default=str))
        else:
            self._table(results)
            if held and options["verbosity"] >= 2:
                self.stdout.write("\nLogged while probing:")
                for record in held:
                    self.stdout.write(f"  {record.levelname} {record.name}: {record.getMessage()}")
            for problem in cache_problems:
                self.stdout.write(
                    self.style.WARNING(
                        f"TOKEN_CACHE_DIR not used: {problem}; tokens are kept in memory only (W007)."
                    )
                )
        if not healthy:
            failed = sum(not r.ok for r in results)
            raise CommandError(f"{failed} of {len(results)} checks failed", returncode=1)

    def _check_selection(self, only: dict[str, Any], selected: list[probes.Target]) -> None:
        """Every alias named on the command line exists and uses django-azure-mi; a service selected by a
        switch is configured."""
        from django.conf import settings

        for service in services.registered():
            chosen = [t for t in selected if t.service == service.name]
            for argument in service.arguments:
                value = only.get(argument.name)
                if not value:
                    continue
                if argument.setting is None:
                    if not chosen and service.unconfigured:
                        raise CommandError(f"--{argument.name}: {service.unconfigured}")
                    continue
                for alias in value:
                    if alias not in (getattr(settings, argument.setting, None) or {}):
                        raise CommandError(
                            f"--{argument.name} {alias}: there is no {argument.setting}[{alias!r}]."
                        )
                    setting = f"{argument.setting}["  # any service's target of that setting (MySQL's too)
                    if not any(t.alias == alias and t.where.startswith(setting) for t in selected):
                        raise CommandError(
                            f"--{argument.name} {alias}: it does not use django-azure-mi (its ENGINE, "
                            "BACKEND or OPTIONS are not ours: see the service's page in the docs)."
                        )

    def _table(self, results: list[probes.Result]) -> None:
        write = self.stdout.write
        if not results:
            write(
                "Nothing to check: no "
                + ", ".join(s.title for s in services.registered())
                + " uses django-azure-mi here."
            )
            return
        rows = [("", "SERVICE", "ALIAS", "TIME", "DETAILS")]
        for r in results:
            mark = "✓" if r.ok else "✗"
            rows.append((mark, r.service, r.alias, f"{r.elapsed_ms:.0f} ms", _summary(r)))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            line = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
            style = self.style.SUCCESS if row[0] == "✓" else self.style.ERROR if row[0] == "✗" else str
            write(style(line.rstrip()))
        identities: dict[str, dict[str, Any]] = {}
        for r in results:
            if r.identity:
                identities.setdefault(str(r.identity.get("oid")), r.identity)
        if identities:
            write("\nIdentities (from the token claims)")
            for facts in identities.values():
                write(
                    f"  {facts['credential']}: name {facts.get('name') or '?'}, oid {facts.get('oid')}, "
                    f"tid {facts.get('tid')}, app id {facts.get('appid')}, token expires in "
                    f"{_duration(facts.get('expires_in_s'))}"
                )
        for r in results:
            if not r.ok:
                write(self.style.ERROR(f"\n✗ {r.service} {r.alias!r}: {r.error}"))
                write(f"  Diagnosis: {r.diagnosis}")
                write(f"  Fix: {r.fix}")
        healthy = sum(r.ok for r in results)
        write(f"\n{healthy} of {len(results)} healthy.")


def _summary(r: probes.Result) -> str:
    if not r.ok:
        return r.diagnosis or "failed"
    return services.get(r.service).summary(r.details)


@contextlib.contextmanager
def _held_logs() -> Iterator[list[logging.LogRecord]]:
    """What the package logs while the probes run, held back instead of going to the handlers (Python's
    last-resort handler prints a WARNING to stderr when logging is not configured): a refused sign-in logs
    the message the report prints anyway. ``-v 2`` prints what was held."""
    held: list[logging.LogRecord] = []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record)

    logger = logging.getLogger("django_azure_mi")
    handler, propagate = Hold(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield held
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _arguments() -> list[services.Argument]:
    return [argument for service in services.registered() for argument in service.arguments]


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
