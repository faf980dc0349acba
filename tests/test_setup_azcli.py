"""Every ``az`` command ``azure_setup`` generates, for a matrix of settings, parses with azure-cli's own
parser: its command exists and each argument is one that command accepts. Nothing runs: the parse is
stopped by azure-cli's post-parse event, before validators, login or any request.

azure-cli is large, so it is installed only in its own tox environment (``tox -e azcli``, part of
``make test``), where ``AZCLI_REQUIRED=1`` makes a missing azure-cli an error instead of a skip."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import shlex

import pytest

if os.environ.get("AZCLI_REQUIRED"):
    import azure.cli.core  # noqa: F401  # the azcli env must have it: never skip there
else:
    pytest.importorskip("azure.cli.core", reason="azure-cli is installed in tox -e azcli only")

from .test_setup import cache, database, setup, site, storage  # noqa: F401

GUID = "6f1c3a52-8a54-4b0c-9a0e-2b1b4f0d7e11"
VALUES = {  # what the script's variables hold when it runs
    "RESOURCE_GROUP": "rg",
    "PG_SERVER": "myserver",
    "PG_ADMIN": "admin@example.com",
    "PG_ADMIN_OID": GUID,
    "PG_ADMIN_TYPE": "User",
}
SUBSTITUTION = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/x/y/z"


def az_commands(text: str) -> list[list[str]]:
    """Every ``az`` invocation in a step's text: the outer command and those inside ``$(…)``, as the shell
    would split them, variables replaced by plausible values."""
    found: list[list[str]] = []
    while (start := text.find("$(az ")) >= 0:
        depth, end = 0, start + 1
        for end in range(start + 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        found += az_commands(text[start + 2 : end])
        text = text[:start] + SUBSTITUTION + text[end + 1 :]
    text = re.sub(r"\$(PRINCIPAL_ID\w*)", GUID, text)
    text = re.sub(r"\$([A-Z_]+)", lambda m: VALUES.get(m[1], m[0]), text)
    if text.lstrip().startswith("az "):
        found.append(shlex.split(text)[1:])
    return found


# Commands of azure-cli extensions, which azure-cli itself doesn't have and this machine can't install (their
# index is on aka.ms): each one's options as its source declares them, with the pattern a value must match
# (None: any). redisenterprise: Azure/azure-cli-extensions src/redisenterprise/azext_redisenterprise/aaz/
# latest/redisenterprise/database/access_policy_assignment/_create.py at b421c323 (API 2025-05-01-preview;
# the script installs the newest extension). An older one (35373d53, API 2024-09-01-preview) refused
# hyphens in --cluster-name, which AMR names may have; the assignment's name still takes none.
NAME = r"^[A-Za-z0-9]{1,60}$"
HYPHENATED = r"^(?=.{1,60}$)[A-Za-z0-9]+(-[A-Za-z0-9]+)*$"
EXTENSIONS: dict[str, dict[str, str | None]] = {
    "redisenterprise database access-policy-assignment create": {
        "-n": NAME,
        "--name": NAME,
        "--access-policy-assignment-name": NAME,
        "--cluster-name": HYPHENATED,
        "--database-name": HYPHENATED,
        "-g": None,
        "--resource-group": None,
        "--access-policy-name": r"^([a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]|[a-zA-Z0-9])$",
        "--object-id": None,
        "--no-wait": None,
    },
}
EVERY_COMMAND = {"--query", "-o", "--output", "--subscription", "--only-show-errors", "--verbose", "--debug"}


def parse_extension(arguments: list[str]) -> tuple[bool, str] | None:
    """(accepted, why not) for an extension's command, None for azure-cli's own."""
    for command, options in EXTENSIONS.items():
        words = command.split()
        if arguments[: len(words)] == words:
            rest = arguments[len(words) :]
            unknown = [a for a in rest if a.startswith("-") and a not in options.keys() | EVERY_COMMAND]
            odd = [
                (option, value)
                for option, value in itertools.pairwise(rest)
                if (pattern := options.get(option)) and not re.fullmatch(pattern, value)
            ]
            return not unknown and not odd, f"unknown options {unknown}, values their patterns refuse {odd}"
    return None


def test_the_recorded_patterns_are_the_extensions():
    """The cluster and assignment names azure_setup writes against the recorded patterns: a hyphenated AMR
    name passes (Azure allows it), an assignment name with a hyphen doesn't (the extension refuses it)."""
    base = ["redisenterprise", "database", "access-policy-assignment", "create", "-g", "rg"]
    assert parse_extension([*base, "--cluster-name", "mysite-cache", "-n", "django1"]) == (
        True,
        "unknown options [], values their patterns refuse []",
    )
    assert not parse_extension([*base, "--cluster-name", "-bad", "-n", "django1"])[0]
    assert not parse_extension([*base, "--cluster-name", "c", "-n", "django-1"])[0]


def parse_with_azure_cli(arguments: list[str]) -> tuple[bool, str]:
    """(whether azure-cli's parser accepted ``az ARGUMENTS``, what it said)."""
    from azure.cli.core import get_default_cli
    from knack.events import EVENT_INVOKER_POST_PARSE_ARGS

    class Parsed(Exception):
        pass

    cli = get_default_cli()
    reached: list[bool] = []

    def stop(cli_ctx: object, **kwargs: object) -> None:
        reached.append(True)
        raise Parsed

    cli.register_event(EVENT_INVOKER_POST_PARSE_ARGS, stop)
    out = io.StringIO()
    with contextlib.suppress(SystemExit):
        cli.invoke(arguments, out_file=out)
    return bool(reached), out.getvalue()


SETTINGS = {
    "everything": dict(
        DATABASES={
            "default": database(),
            "replica": database(user="r", TEST={"MIRROR": "default"}),
            "geo": database(
                host="geo.postgres.database.azure.com", ENGINE="django_azure_mi.backends.postgis"
            ),
            "my": database(host="my.mysql.database.azure.com", ENGINE="django_azure_mi.backends.mysql"),
        },
        CACHES={
            "amr": cache(),
            "classic": cache("rediss://old.redis.cache.windows.net:6380/0"),
            "hyphenated": cache("rediss://mysite-cache.westeurope.redis.azure.net:10000/0"),
        },
        STORAGES={"default": storage(expiration_secs=60)},
    ),
    "private hosts": dict(DATABASES={"default": database(host="10.0.0.4")}),
    "us government": dict(
        AZURE_MANAGED_IDENTITY={"CLOUD": "usgovernment"},
        DATABASES={"default": database(host="s.postgres.database.usgovcloudapi.net")},
    ),
}


@pytest.fixture(autouse=True)
def azure_config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "azure"))  # azure-cli writes its config there
    monkeypatch.setenv("AZURE_CORE_COLLECT_TELEMETRY", "false")


@pytest.mark.parametrize("variant", list(SETTINGS))
@pytest.mark.parametrize("name", [[], ["--identity-name", "my-app-identity"]], ids=["by id", "by name"])
def test_every_generated_az_command_parses_with_azure_cli(site, variant, name, capsys):  # noqa: F811
    site(**SETTINGS[variant])
    import json

    document = json.loads(setup("--json", "--keyvault-url", "https://v.vault.azure.net", *name))
    steps = document["steps"]
    commands = [c for s in steps for c in az_commands(s.get("text", "") + " " + s.get("runner", ""))]
    commands += az_commands(document["az_cloud"] or "")
    mentioned = [c for s in steps for m in s.get("mentions", ()) for c in az_commands(m)]  # cited in prose
    assert mentioned
    commands += mentioned
    assert len(commands) >= 3
    refused = []
    for arguments in commands:
        ok, said = parse_extension(arguments) or parse_with_azure_cli(arguments)
        if not ok:
            refused.append((" ".join(arguments), said + capsys.readouterr().err[-600:]))
    assert refused == []


@pytest.mark.parametrize("kind", ["User", "Group", "ServicePrincipal"])
def test_each_kind_of_postgres_entra_admin_the_script_takes_parses(site, kind):  # noqa: F811
    """``PG_ADMIN_TYPE`` (User unless the environment names a Group or ServicePrincipal admin) is one of
    the values azure-cli's ``--type`` accepts; a value it doesn't know is refused by the same parse."""
    import json

    site(DATABASES={"default": database()})
    steps = json.loads(setup("--json"))["steps"]
    kinds = next(s for s in steps if s.get("name") == "PG_ADMIN_TYPE")
    assert kinds["default"] == "User" and kind in kinds["why"]
    admin = next(s for s in steps if "microsoft-entra-admin create" in s.get("text", ""))
    [arguments] = az_commands(admin["text"].replace("$PG_ADMIN_TYPE", kind))
    assert parse_with_azure_cli(arguments)[0]
    [arguments] = az_commands(admin["text"].replace("$PG_ADMIN_TYPE", "Nobody"))
    assert not parse_with_azure_cli(arguments)[0]
