"""``manage.py azure_check``: get each configured service's token and talk to the service.

Exit status 0 only when everything checked is healthy; every probe has a deadline (``--timeout``), so the
command never hangs and can serve as a container startup probe. Tokens never appear in the output.
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import probes, runtime


class Command(BaseCommand):
    help = (
        "Check every database, cache, storage and Key Vault configured for a managed identity: acquire its "
        "token, report the identity, probe the service, and explain failures. Exit 0 only when all are "
        "healthy."
    )
    requires_system_checks: Any = []  # report misconfiguration as results, not as a SystemCheckError

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON document")
        parser.add_argument("--database", action="append", metavar="ALIAS", help="only this database alias")
        parser.add_argument("--cache", action="append", metavar="ALIAS", help="only this cache alias")
        parser.add_argument("--storage", action="append", metavar="ALIAS", help="only this storage alias")
        parser.add_argument("--keyvault", action="store_true", help="only Key Vault (AZURE_KEY_VAULT_URL)")
        parser.add_argument(
            "--celery",
            action="store_true",
            help="only Celery's broker and result backend (CELERY_* settings)",
        )
        parser.add_argument(
            "--secret",
            action="append",
            metavar="NAME",
            help="Key Vault secret whose metadata to read (default: the secrets settings.py read)",
        )
        parser.add_argument(
            "--timeout", type=float, default=20.0, help="seconds before a probe counts as failed (default 20)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        limited = any(options[k] for k in ("database", "cache", "storage", "keyvault", "celery"))
        selected = probes.targets(
            databases=options["database"] or ([] if limited else None),
            caches=options["cache"] or ([] if limited else None),
            storages=options["storage"] or ([] if limited else None),
            keyvault=options["keyvault"] or not limited,
            secrets=options["secret"],
            celery=options["celery"] or not limited,
        )
        self._check_aliases(options, selected)
        started = time.monotonic()
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
            for problem in cache_problems:
                self.stdout.write(
                    self.style.WARNING(
                        f"TOKEN_CACHE_DIR not used: {problem}; tokens are kept in memory only (W007)."
                    )
                )
        if not healthy:
            failed = sum(not r.ok for r in results)
            raise CommandError(f"{failed} of {len(results)} checks failed", returncode=1)

    def _check_aliases(self, options: dict[str, Any], selected: list[probes.Target]) -> None:
        """Every alias named on the command line exists and uses django-azure-mi."""
        from django.conf import settings

        if options["keyvault"]:
            from ...keyvault import VAULT_URL_ENV, vault_url

            if not vault_url():
                raise CommandError(f"--keyvault: no Key Vault is configured ({VAULT_URL_ENV} is not set).")
        for option, setting in (("database", "DATABASES"), ("cache", "CACHES"), ("storage", "STORAGES")):
            for alias in options[option] or ():
                if alias not in (getattr(settings, setting, None) or {}):
                    raise CommandError(f"--{option} {alias}: there is no {setting}[{alias!r}].")
                if not any(t.service == option and t.alias == alias for t in selected):
                    raise CommandError(f"--{option} {alias}: it does not use django-azure-mi (see README).")

    def _table(self, results: list[probes.Result]) -> None:
        write = self.stdout.write
        if not results:
            write(
                "Nothing to check: no database, cache, storage, Celery broker or Key Vault uses "
                "django-azure-mi here."
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
    d = r.details
    if not r.ok:
        return r.diagnosis or "failed"
    if r.service == "database":
        tls = " ".join(filter(None, ["TLS", d.get("tls_version")])) if d.get("tls") else "no TLS (loopback)"
        return f"user {d.get('current_user')}, {tls}, {d.get('server')}"
    if r.service in ("cache", "celery-broker", "celery-results"):
        steps = "PING, SET/GET/DEL" if d.get("set_get_del") else "PING"
        return f"{steps} ok, ACL WHOAMI {d.get('user')}"
    if r.service == "storage":
        done = "write/read/delete" + (", signed URL" if d.get("signed_url") else "")
        return f"{done} ok in {d.get('container')} at {d.get('account_url')}"
    secrets = d.get("secrets") or []
    if not secrets:
        return "token ok (no secret read by settings to probe)"
    return ", ".join(f"secret {s['name']} ({'enabled' if s['enabled'] else 'disabled'})" for s in secrets)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
