"""What Azure must have for these settings: the steps ``manage.py azure_setup`` prints.

Each registered service that signs in somewhere adds its steps to a :class:`Plan` (its descriptor's
``provision``), from the settings alone: no network, no credential. A step is an ``az`` command, SQL to run
as a server's Entra admin, or a lookup of what settings can't know (an identity's object id). Steps name the
identity they are for, why they are needed, the setting they come from, and the failure kinds of
``azure_check`` whose cause they remove (``--check`` prints only those).

The plan renders as a POSIX shell script (lookups become variables; SQL runs through its step's own
command, a database client signed in with an Entra admin's token) or as JSON, one object per step. Values
a step can't know are shell variables that the script requires (``${RESOURCE_GROUP:?…}``) with the command
that finds them; ``--resource-group``, ``--subscription`` and ``--identity-name`` fill them in. How the
steps were checked against azure-cli and against the stand-ins: docs/setup.md.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import conf


@dataclass(frozen=True)
class Identity:
    """A managed identity the settings sign in with: a user-assigned one's client id, or None for the host's
    system-assigned identity."""

    client_id: str | None

    @property
    def label(self) -> str:
        return f"user-assigned {self.client_id}" if self.client_id else "system-assigned"

    @property
    def short(self) -> str:
        """A name part for Azure resources made for it (letters and digits only)."""
        return "system" if not self.client_id else re.sub(r"[^0-9a-f]", "", self.client_id.lower())[:8]

    @property
    def variable(self) -> str:
        """The shell variable that holds its object (principal) id."""
        if not self.client_id:
            return "PRINCIPAL_ID"
        return "PRINCIPAL_ID_" + re.sub(r"[^0-9A-Za-z]", "", self.client_id)[:8].upper()


@dataclass(frozen=True)
class Step:
    """One thing Azure must have. ``kind``: "lookup" (a shell variable, ``text`` its command or ``default``
    its value; neither: the script asks for it), "az" (an azure-cli command line), "sql" (statements for
    ``server``'s ``database``, run as its Entra admin by ``runner``, a command that reads them on stdin),
    "note" (what a person must do or know, no command).
    ``explains``: the failure kinds of a probe of ``where`` whose cause this step removes. ``mentions``: the
    ``az`` commands its prose cites for a person to run (checked like the others: docs/setup.md)."""

    service: str
    identity: str
    kind: str
    text: str
    why: str
    where: tuple[str, ...] = ()  # the settings it is for (one step can serve several: a cache and Celery)
    server: str = ""
    database: str = ""
    name: str = ""  # a lookup's variable
    default: str = ""  # a lookup without a command: its value unless the environment sets one
    runner: str = ""  # a sql step's command line
    explains: tuple[str, ...] = ()
    mentions: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value not in ("", ())}

    def serves(self, setting: str) -> bool:
        return setting in self.where


@dataclass
class Plan:
    """The steps for one settings module. ``names``: an identity's name by client id (None: the default
    identity), from ``--identity-name``; ``subscription``/``resource_group``: what ``az`` commands need."""

    cloud: str = "public"
    subscription: str | None = None
    resource_group: str | None = None
    names: dict[str | None, str] = field(default_factory=dict)
    default_client_id: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)  # the services' own azure_setup options
    steps: list[Step] = field(default_factory=list)
    keys: list[Any] = field(default_factory=list, repr=False)  # what makes each step one of a kind

    @classmethod
    def for_settings(cls, **kwargs: Any) -> Plan:
        """A plan for the current ``AZURE_MANAGED_IDENTITY`` (its cloud and default identity)."""
        config = conf.build_config(conf.read_setting(_settings()))
        return cls(cloud=config.cloud.name, default_client_id=config.client_id, **kwargs)

    # ------------------------------------------------------------------ what services call

    def identity(self, client_id: str | None) -> Identity:
        """The identity an option's ``client_id`` (None: the configured default) stands for."""
        return Identity(client_id or self.default_client_id)

    def name_of(self, identity: Identity) -> str | None:
        """The identity's name from ``--identity-name``, if given."""
        key = identity.client_id.lower() if identity.client_id else None
        default = self.default_client_id.lower() if self.default_client_id else None
        return self.names.get(key) or (self.names.get(None) if key == default else None)

    def principal(self, identity: Identity, service: str) -> str:
        """``"$VAR"``: the identity's object id in the script, looked up once."""
        name = self.name_of(identity)
        if name:
            command = (
                f'az ad sp list --display-name {shlex.quote(name)} --query "[?servicePrincipalType=='
                f"'ManagedIdentity'].id\" -o tsv"
            )
            why = f"the object id of the managed identity named {name!r}"
        elif identity.client_id:
            command = f"az ad sp show --id {identity.client_id} --query id -o tsv"
            why = "the user-assigned identity's object id (its service principal's id, not the client id)"
        else:
            command = ""
            mentions = tuple(
                f"az {group} identity show -g GROUP -n APP --query principalId -o tsv"
                for group in ("webapp", "containerapp")
            )
            why = (
                f"the object (principal) id of the app's system-assigned identity: {mentions[0]} (App "
                f"Service), {mentions[1]} (Container Apps), or pass --identity-name APP"
            )
        self.add(
            Step(
                service, identity.label, "lookup", command, why, name=identity.variable,
                mentions=() if command else mentions,
            ),
            key=("lookup", identity.variable),
        )  # fmt: skip
        return f"${identity.variable}"

    def group(self) -> str:
        """``"$RESOURCE_GROUP"`` (required by the script unless ``--resource-group`` set it), quoted."""
        return '"$RESOURCE_GROUP"'

    def add(self, step: Step, key: Any = None) -> None:
        """Add ``step`` unless the same one (same kind and text, or the same ``key``) is there already; then
        the one there serves ``step``'s settings too."""
        marker = key if key is not None else (step.kind, step.text, step.server, step.database)
        if marker not in self.keys:
            self.steps.append(step)
            self.keys.append(marker)
            return
        index = self.keys.index(marker)
        there = self.steps[index]
        more = tuple(w for w in step.where if w not in there.where)
        if more:
            self.steps[index] = dataclasses.replace(there, where=there.where + more)

    def needed(self, chosen: Iterable[Step]) -> list[Step]:
        """``chosen`` with the lookups whose variables they use, in the plan's order."""
        wanted = list(chosen)
        text = " ".join(f"{s.text} {s.why} {s.runner}" for s in wanted)
        used = {s.name for s in self.steps if s.kind == "lookup" and re.search(rf"\${{?{s.name}\b", text)}
        return [s for s in self.steps if s in wanted or (s.kind == "lookup" and s.name in used)]

    # ------------------------------------------------------------------ rendering

    @property
    def az_cloud(self) -> str | None:
        """The ``az cloud set`` a sovereign cloud's commands need first (azure-cli's default is Azure's
        public cloud), else None."""
        if self.cloud == "public":
            return None
        return f"az cloud set --name {conf.CLOUDS[self.cloud].az_name}"

    def as_json(self, steps: Iterable[Step] | None = None, failures: list[str] | None = None) -> str:
        document: dict[str, Any] = {
            "cloud": self.cloud,
            "az_cloud": self.az_cloud,
            "subscription": self.subscription,
            "resource_group": self.resource_group,
            "steps": [s.as_dict() for s in (self.steps if steps is None else steps)],
        }
        if failures is not None:
            document["failures"] = failures
        return json.dumps(document, indent=2) + "\n"

    def as_script(self, steps: Iterable[Step] | None = None) -> str:
        chosen = list(self.steps if steps is None else steps)
        lines = [
            "#!/bin/sh",
            "# What Azure must have for this site's settings (manage.py azure_setup). Run it signed in",
            "# with `az login` as someone who may assign roles; the SQL as each database server's Entra",
            "# admin.",
            "set -eu",
        ]
        if self.az_cloud:
            lines += [f"# CLOUD is {self.cloud!r}: azure-cli must talk to that cloud", self.az_cloud]
        if self.subscription:
            lines.append(f"az account set --subscription {shlex.quote(self.subscription)}")
        group = (
            shlex.quote(self.resource_group)
            if self.resource_group
            else '"${RESOURCE_GROUP:?set RESOURCE_GROUP to the resource group of the services, or pass '
            '--resource-group}"'
        )
        if any("$RESOURCE_GROUP" in s.text + s.why for s in chosen):
            lines.append(f"RESOURCE_GROUP={group}")
        for step in chosen:
            who = f" ({step.identity})" if step.identity else ""
            lines += ["", *_comment(f"{step.service}{who}: {step.why or step.text}")]
            if step.kind == "lookup":  # a value set in the environment wins
                if step.text:
                    lines.append(f'{step.name}="${{{step.name}:-$({step.text})}}"')
                elif step.default:
                    lines.append(f'{step.name}="${{{step.name}:-{_shell_safe(step.default)}}}"')
                else:
                    lines.append(
                        f'{step.name}="${{{step.name}:?set {step.name} to {_shell_safe(step.why)}}}"'
                    )
            elif step.kind == "az":
                lines.append(step.text)
            elif step.kind == "sql":  # an unquoted here-doc: the lookups' $VARIABLES expand
                lines += [f"{step.runner} <<SQL", step.text, "SQL"]
        return "\n".join(lines) + "\n"


def _comment(text: str) -> list[str]:
    words, lines, line = text.split(), [], "#"
    for word in words:
        if len(line) + len(word) + 1 > 110:
            lines.append(line)
            line = "#  "
        line += " " + word
    return [*lines, line]


def _shell_safe(text: str) -> str:
    """``text`` inside a double-quoted ``${VAR:?…}`` message: no expansion, no early end (bash reads a single
    quote there as the start of a quoted string)."""
    return re.sub(r"[\"'`$\\}]", "", text)


def sql_literal(value: str) -> str:
    """A SQL string literal safe inside the script's unquoted here-doc (no ``$``, backquote or backslash of
    the settings' reaches the shell)."""
    return "'" + _here_doc_safe(value).replace("'", "''") + "'"


def sql_identifier(value: str, quote: str = '"') -> str:
    r"""A quoted SQL identifier (Postgres ``"…"``, MySQL ``\`…\```) safe inside the script's here-doc."""
    return _here_doc_safe(quote + value.replace(quote, quote * 2) + quote)


def _here_doc_safe(value: str) -> str:
    return value.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")


def build(**kwargs: Any) -> Plan:
    """Every registered service's steps for the current settings."""
    from . import services

    plan = Plan.for_settings(**kwargs)
    for service in services.registered():
        if service.provision is not None:
            service.provision(plan)
    return plan


def _settings() -> Any:
    from django.conf import settings

    return settings
