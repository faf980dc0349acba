"""``manage.py azure_setup``: what Azure must have for this settings module, as a shell script or JSON.

Read from the settings alone (no network, no credential): every database, cache, Celery broker and result
backend, channel layer, storage and Key Vault that signs in with a managed identity, and per identity and
service the ``az`` commands, the SQL to run as each Postgres server's Entra admin, and the lookups of what
settings can't know (docs/setup.md). ``--check`` runs ``azure_check``'s probes first and prints only the
steps whose absence explains a failure.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import conf, probes, provision, services


class Command(BaseCommand):
    help = (
        "Print what Azure must have for these settings: role and access policy assignments, the Postgres "
        "principals and grants, and how to look up what settings can't know. A shell script, or --json. "
        "--check prints only the steps whose absence explains a failing probe."
    )
    requires_system_checks: Any = "__all__"  # a misconfigured setting is told with its check id first

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="one JSON document: a list of steps")
        parser.add_argument("--subscription", help="the subscription the services are in (az account set)")
        parser.add_argument("--resource-group", help="the resource group the services are in")
        parser.add_argument(
            "--identity-name",
            action="append",
            default=[],
            metavar="[CLIENT_ID=]NAME",
            help="the name of the managed identity (the app's, or CLIENT_ID's): its object id is looked up "
            "by name, and a Postgres USER equal to it is created by name",
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="probe every service first (as azure_check does) and print only what explains a failure",
        )
        parser.add_argument(
            "--timeout", type=float, default=20.0, help="seconds before a probe counts as failed (--check)"
        )
        for argument in _setup_arguments():  # each service's own (--keyvault-url URL)
            parser.add_argument(f"--{argument.name}", metavar=argument.name.upper(), help=argument.help)

    def handle(self, *args: Any, **options: Any) -> None:
        plan = provision.build(
            subscription=options["subscription"],
            resource_group=options["resource_group"],
            names=_names(options["identity_name"]),
            arguments={a.dest: options[a.dest] for a in _setup_arguments() if options[a.dest]},
        )
        if not options["check"]:
            self.stdout.write(plan.as_json() if options["json"] else plan.as_script(), ending="")
            return
        self._check(plan, options)

    def _check(self, plan: provision.Plan, options: dict[str, Any]) -> None:
        targets = probes.targets()
        where = {(t.service, t.alias): t.where for t in targets}
        failed = [r for r in probes.run(targets, timeout=options["timeout"]) if not r.ok]
        if not failed:
            self.stdout.write(f"All {len(targets)} checked services are healthy: nothing to set up.")
            return
        chosen: list[provision.Step] = []
        notes: list[str] = []
        for result in failed:
            setting = where.get((result.service, result.alias), result.alias)
            explaining = [
                s for s in plan.steps if s.serves(setting) and result.kind and result.kind in s.explains
            ]
            what = "The steps below are what it lacks." if explaining else f"Not an Azure step: {result.fix}"
            notes.append(f"{result.service} {setting}: {result.diagnosis} {what}")
            chosen += [s for s in explaining if s not in chosen]
        steps = plan.needed(chosen)
        if options["json"]:
            self.stdout.write(plan.as_json(steps, failures=notes))
        else:
            header = "".join(f"# {line}\n" for line in notes)
            self.stdout.write(header + plan.as_script(steps) if steps else header, ending="")
        raise CommandError(f"{len(failed)} of {len(targets)} checks failed", returncode=1)


def _setup_arguments() -> list[services.Argument]:
    return [argument for service in services.registered() for argument in service.setup_arguments]


def _names(values: list[str]) -> dict[str | None, str]:
    """``--identity-name NAME`` (the settings' default identity) and ``--identity-name CLIENT_ID=NAME``."""
    names: dict[str | None, str] = {}
    for value in values:
        client_id, _, name = value.rpartition("=")
        if client_id and not conf.GUID.match(client_id):
            raise CommandError(f"--identity-name {value!r}: {client_id!r} is not a client id (a GUID).")
        if not name:
            raise CommandError(f"--identity-name {value!r}: give the identity's name.")
        names[client_id.lower() or None] = name
    return names
