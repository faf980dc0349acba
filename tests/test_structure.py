"""The shape of the package (docs/architecture.md): one owner of process state, one renewal loop, a
Django-free core, no import cycles, small classes, side-effect-free checks, no leaked providers."""

from __future__ import annotations

import ast
import importlib
import itertools
import re
import threading
import time
from pathlib import Path

import pytest
from django.test import override_settings

from django_azure_mi import get_token_provider, runtime
from django_azure_mi.checks import check_settings

from .conftest import CLIENT_ID, STORAGE

PACKAGE = Path(__file__).resolve().parent.parent / "django_azure_mi"
PRODUCT = sorted(p for p in PACKAGE.rglob("*.py") if "testing" not in p.relative_to(PACKAGE).parts)
STAND_INS = sorted((PACKAGE / "testing").glob("*.py"))  # shipped too: held to the same standard
MUTABLE_CALLS = {"dict", "list", "set", "defaultdict", "OrderedDict", "WeakSet", "WeakValueDictionary",
                 "WeakKeyDictionary", "Lock", "RLock", "Condition", "Event", "local"}  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def is_mutable(value: ast.expr | None, *, lists: bool = True) -> bool:
    if isinstance(value, (ast.Dict, ast.Set, ast.DictComp, ast.SetComp)):
        return True
    if lists and isinstance(value, (ast.List, ast.ListComp)):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return name in MUTABLE_CALLS
    return False


CONSTANT = re.compile(r"^_?[A-Z][A-Z0-9_]*$|^__\w+__$|^urlpatterns$")


def names_of(node: ast.Assign | ast.AnnAssign) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return [ast.unparse(t) for t in targets]


def test_process_state_lives_in_the_runtime_only():
    """Mutable module or class attributes (other than constant tables: UPPER_CASE names) only in
    runtime.py; no ``global`` statement elsewhere."""
    offenders = []
    for path in PRODUCT + STAND_INS:
        if path.name == "runtime.py" and path.parent == PACKAGE:
            continue
        for node in tree(path).body:
            mutable = isinstance(node, (ast.Assign, ast.AnnAssign)) and is_mutable(node.value)
            if mutable and not all(CONSTANT.match(name) for name in names_of(node)):  # type: ignore[arg-type]
                offenders.append(f"{module_name(path)}: {ast.unparse(node)[:40]} (module level)")
            if isinstance(node, ast.ClassDef):  # class attributes shared by every instance
                for item in node.body:
                    mutable = isinstance(item, (ast.Assign, ast.AnnAssign)) and is_mutable(
                        item.value, lists=False
                    )
                    if mutable and not all(CONSTANT.match(name) for name in names_of(item)):
                        offenders.append(f"{module_name(path)}: {node.name}.{ast.unparse(item)[:40]}")
        offenders += [
            f"{module_name(path)}: global {', '.join(n.names)}"
            for n in ast.walk(tree(path))
            if isinstance(n, ast.Global)
        ]
    assert offenders == []


def test_one_fork_hook_and_no_test_only_functions_in_the_product():
    hooks = []
    for path in PRODUCT:
        source = path.read_text()
        hooks += [module_name(path)] * source.count("register_at_fork(")
        names = {n.name for n in ast.walk(tree(path)) if isinstance(n, ast.FunctionDef) and n.col_offset == 0}
        if module_name(path) != "django_azure_mi.runtime":
            assert not names & {"reset", "clear_cache", "reset_state"}, module_name(path)
    assert hooks == ["django_azure_mi.runtime"]


def test_one_renewal_loop():
    """Background threads are started by the Refresher (renewals) and the probes (deadlines) only."""
    starting = sorted(module_name(p) for p in PRODUCT if "threading.Thread(" in p.read_text())
    assert starting == ["django_azure_mi.core.refresher", "django_azure_mi.probes"]


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Package modules ``path`` imports (top-level and inside functions; not TYPE_CHECKING-only). ``from .
    import conf`` is an edge to ``conf``, not to the package's ``__init__``."""
    me = module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found: set[str] = set()
    parsed = tree(path)
    type_checking = {
        id(n)
        for block in ast.walk(parsed)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for n in ast.walk(block)
    }
    for node in ast.walk(parsed):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            submodules = {f"{module}.{alias.name}" for alias in node.names} & modules
            found |= submodules or {module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found & modules


def test_no_import_cycle_and_a_django_free_core():
    modules = {module_name(p): p for p in PRODUCT}
    graph = {name: imports_of(path, set(modules)) - {name} for name, path in modules.items()}
    for name, path in modules.items():
        if name.startswith("django_azure_mi.core"):
            for node in ast.walk(tree(path)):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module or ""]
                else:
                    continue
                assert not any(n == "django" or n.startswith("django.") for n in names), name
            assert all(m.startswith("django_azure_mi.core") for m in graph[name]), name

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], {start}
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return [*trail, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
        return None

    # a package's __init__ re-exporting its own modules is not a cycle with them
    cycles = [c for c in map(cycle_from, graph) if c]
    cycles = [
        c
        for c in cycles
        if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in itertools.pairwise(c))
    ]
    assert cycles == []


def test_no_product_module_imports_the_stand_ins():
    everything = {module_name(p) for p in PACKAGE.rglob("*.py")}
    assert {
        module_name(p): found
        for p in PRODUCT
        if (found := {m for m in imports_of(p, everything) if m.startswith("django_azure_mi.testing")})
    } == {}


def test_no_class_over_about_200_lines():
    sizes = {
        f"{module_name(p)}.{n.name}": n.end_lineno - n.lineno + 1
        for p in PRODUCT + STAND_INS
        for n in ast.walk(tree(p))
        if isinstance(n, ast.ClassDef) and n.end_lineno is not None
    }
    assert {name: size for name, size in sizes.items() if size > 210} == {}


def test_every_stand_in_server_is_a_stand_in():
    """Every class of ``testing/`` that starts a server (has ``start`` and ``stop``) subclasses StandIn (one
    lifecycle: a start that fails partway stops what it started), and the network helpers live in net.py."""
    from django_azure_mi.testing.base import StandIn

    servers = []
    for path in STAND_INS:
        module = importlib.import_module(module_name(path))
        for node in tree(path).body:
            if isinstance(node, ast.ClassDef):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                cls = getattr(module, node.name)
                if {"start", "stop"} <= methods and cls is not StandIn:
                    servers.append((node.name, issubclass(cls, StandIn)))
    assert len(servers) >= 5 and all(ok for _, ok in servers), servers
    helpers = {
        module_name(p)
        for p in STAND_INS
        for n in tree(p).body
        if isinstance(n, ast.FunctionDef) and n.name in ("free_port", "wait_port")
    }
    assert helpers <= {"django_azure_mi.testing.net"}


def test_refresher_states_its_state_machine_and_invariants():
    doc = ast.get_docstring(tree(PACKAGE / "core" / "refresher.py")) or ""
    assert "State machine" in doc and "Invariants" in doc


# ---------------------------------------------------------------------------------------------- behaviour


def raising_factory():
    raise AssertionError("manage.py check called the CREDENTIAL factory")


ALL_ADAPTERS = {
    "AZURE_MANAGED_IDENTITY": {"CREDENTIAL": "tests.test_structure.raising_factory"},
    "DATABASES": {
        "default": {
            "ENGINE": "django_azure_mi.backends.postgresql",
            "HOST": "srv.postgres.database.azure.com",
            "NAME": "app",
            "USER": "app-identity",
            "OPTIONS": {"pool": True, "managed_identity": {"client_id": CLIENT_ID}},
        }
    },
    "CACHES": {
        "default": {
            "BACKEND": "django_azure_mi.cache.RedisCache",
            "LOCATION": "rediss://c.redis.cache.windows.net:6380/0",
        },
        "redis": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "rediss://c.redis.cache.windows.net:6380/1",
            "OPTIONS": {
                "CONNECTION_FACTORY": "django_azure_mi.cache.EntraConnectionFactory",
                "MANAGED_IDENTITY": {"USERNAME": "00000000-0000-0000-0000-000000000001"},
            },
        },
    },
    "STORAGES": {
        "default": {
            "BACKEND": "django_azure_mi.storage.AzureManagedIdentityStorage",
            "OPTIONS": {"account_name": "acct", "azure_container": "media", "expiration_secs": 3600},
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    },
}


def test_checks_build_no_credential_or_provider_and_never_call_the_factory(monkeypatch):
    monkeypatch.setenv("AZURE_KEY_VAULT_URL", "https://v.vault.azure.net")
    runtime.reset()
    with override_settings(**ALL_ADAPTERS):
        assert [m.id for m in check_settings()] == []
        rt = runtime.get()
        assert rt.providers() == [] and rt._credentials == {}
    runtime.reset()


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("django-azure-mi token")]


def test_settings_changes_leave_only_what_the_current_settings_need(azure_imds):
    clients = [f"{CLIENT_ID[:-1]}{i}" for i in range(5)]
    for client_id in clients:
        azure_imds.add_identity(client_id)
        with override_settings(AZURE_MANAGED_IDENTITY={"CLIENT_ID": client_id}):
            get_token_provider(STORAGE).get_token(STORAGE)
            assert len(runtime.get().providers()) == 1
    deadline = time.monotonic() + 5
    while worker_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker_threads() == []  # the 5 providers of the 5 settings are closed and their workers gone
    get_token_provider(STORAGE).get_token(STORAGE)
    assert len(runtime.get().providers()) == 1 and len(worker_threads()) == 1


@pytest.mark.parametrize("pooled", [False, True], ids=["plain", "pool"])
def test_postgres_takes_the_token_once_per_connection_and_validates_once(
    azure_postgres, use_databases, monkeypatch, pooled
):
    from django.db import connections
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    from django_azure_mi.backends.postgresql import base
    from django_azure_mi.core.provider import TokenProvider

    if pooled and not is_psycopg3:
        pytest.skip("Django's pool needs psycopg 3")
    validations, takes = [], []
    validate, current = base.alias_config, TokenProvider.current
    monkeypatch.setattr(base, "alias_config", lambda *a: validations.append(a) or validate(*a))

    def take(self):  # Postgres only: a storage test's in-flight background fetch may still be running
        if "ossrdbms" in self.scope:
            takes.append(self.scope)
        return current(self)

    monkeypatch.setattr(TokenProvider, "current", take)
    options = {"pool": {"min_size": 0, "max_size": 2}} if pooled else {}
    use_databases(default=azure_postgres.database_settings("app-identity", OPTIONS=options))
    connection = connections["default"]
    for _ in range(3):
        connection.connect()
        with connection.cursor() as cursor:
            cursor.execute("select 1")
        if pooled:
            connection.connection.close()  # a physical close: the next checkout opens a new connection
        connection.close()
    assert len(validations) == 1  # per wrapper, not per connection
    opened = 3 if not pooled else connection.pool.get_stats()["connections_num"]
    assert len(takes) == opened  # one take per physical connection
    if pooled:
        connection.close_pool()


def test_probe_and_error_give_the_same_diagnosis(azure_postgres, use_databases, azure_imds):
    from django.db import OperationalError, connections

    from django_azure_mi import diagnostics, probes

    use_databases(default=azure_postgres.database_settings("somebody-else"))
    with pytest.raises(OperationalError) as info:
        connections["default"].ensure_connection()
    raised = diagnostics.failure_of(info.value)
    assert raised is not None and raised.kind == "auth-refused"
    (result,) = probes.run(probes.targets({"database": ["default"]}))
    assert (result.diagnosis, result.fix) == (raised.diagnosis, raised.fix)


def test_the_design_the_code_cites_is_in_the_repository():
    """Code and tests cite the project's own docs/, never the design notes outside the repository."""
    root = PACKAGE.parent
    cited: set[str] = set()
    for path in [*root.glob("django_azure_mi/**/*.py"), *root.glob("tests/**/*.py")]:
        text = path.read_text()
        assert "DESIGN" + ".md" not in text, f"{path} cites a design that is not in the repository"
        cited.update(re.findall(r"\bdocs/[\w-]+\.md", text))
    assert cited, "no code cites docs/"
    missing = sorted(doc for doc in cited if not (root / doc).is_file())
    assert not missing, missing


def test_one_check_id_registry_raised_ids_are_documented_and_documented_ids_raised():
    """Every id the product raises is in the registry (checkids.SHARED and each service's check_ids) and
    every listed id is raised somewhere; docs/checks.md's table is the registry's own rendering."""
    from django_azure_mi.checkids import by_id, markdown_table, scopes_table

    listed = by_id()
    raised: set[str] = set()
    for path in PRODUCT:
        if path.name == "checkids.py":
            continue
        raised.update(
            re.findall(r"(?<!CheckId\()[\"'](?:django_azure_mi\.)?([EW]\d{3})[\"']", path.read_text())
        )
    assert raised - set(listed) == set(), "raised but not in the check-id registry"
    assert set(listed) - raised == set(), "in the check-id registry but never raised"
    docs = PACKAGE.parent / "docs"
    hint = "differs from the registry's: python -m django_azure_mi.checkids"
    assert markdown_table() in (docs / "checks.md").read_text(), f"docs/checks.md's check table {hint}"
    assert scopes_table() in (docs / "configuration.md").read_text(), f"docs/configuration.md's scopes {hint}"


# The modules every service goes through: they loop over django_azure_mi.services and name none.
SHARED = ["apps", "checkids", "checks", "conf", "diagnostics", "options", "probes", "runtime", "services",
          "urls", "views", "warmup", "management/commands/azure_check"]  # fmt: skip
SERVICE_WORDS = re.compile(r"postgres|psycopg|redis|celery|kombu|blob|storage|vault|azurite|database", re.I)


def code_words(path: Path) -> list[str]:
    """The names, attributes, imported modules and string constants of ``path`` (docstrings left out)."""
    parsed = tree(path)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(parsed)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    words: list[str] = []
    for node in ast.walk(parsed):
        if isinstance(node, ast.Name):
            words.append(node.id)
        elif isinstance(node, ast.Attribute):
            words.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.arg)):
            words.append(getattr(node, "name", None) or getattr(node, "arg", ""))
        elif isinstance(node, ast.ImportFrom):
            words += [node.module or "", *(a.name for a in node.names)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.append(node.value)
    return words


def test_shared_modules_name_no_service():
    """checks, probes, warm-up, the views, azure_check, diagnostics, options, conf and the runtime loop over
    the registry (django_azure_mi.services) and know no service; only REGISTERED names their packages."""
    found = {}
    for name in SHARED:
        path = PACKAGE / f"{name}.py"
        words = [w for w in code_words(path) if SERVICE_WORDS.search(w)]
        if name == "services":  # the registry's list of packages
            from django_azure_mi.services import REGISTERED

            words = [w for w in words if w not in REGISTERED]
        if words:
            found[name] = sorted(set(words))
    assert found == {}


def test_every_service_is_one_package_with_one_descriptor():
    """Each registered service: a package whose service.py holds SERVICE, with a unique name, its scopes in
    every cloud (or another service's), its azure_check options and probes; loading the registry imports no
    driver or SDK."""
    import subprocess
    import sys

    from django_azure_mi import conf, services

    names = [s.name for s in services.registered()]
    assert len(set(names)) == len(names)
    for path, service in zip(services.REGISTERED, services.registered(), strict=True):
        assert (
            path.endswith(".service")
            and (PACKAGE.parent / path.replace(".", "/")).with_suffix(".py").is_file()
        )
        for cloud in conf.CLOUDS:
            assert services.get(service.name).scope(cloud).startswith("https://")
    options = [a.name for s in services.registered() for a in s.arguments]
    assert len(set(options)) == len(options)
    # the adapters' option specs (and Key Vault's binding) name a registered service (their scope's owner)
    from django_azure_mi import keyvault
    from django_azure_mi.backends.postgresql.config import SPEC as POSTGRES
    from django_azure_mi.cache.spec import SPEC as REDIS
    from django_azure_mi.celery import SPEC as CELERY
    from django_azure_mi.storage.backend import SPEC as STORAGE

    assert {POSTGRES.service, REDIS.service, CELERY.service, STORAGE.service, keyvault.NAME} <= set(names)
    code = (
        "import sys, django_azure_mi.services as s; s.registered(); "
        "print(sorted(m for m in ('psycopg', 'psycopg2', 'redis', 'kombu', 'celery', 'azure.storage.blob', "
        "'azure.keyvault.secrets', 'storages') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


def test_the_core_reads_time_through_its_clock():
    """Renewal, backoff, idleness and token checks read the injectable clock (core/clock.py), so they can be
    tested on a fake one. Allowed: the clock itself, a token's default ``now`` and repr, the file cache's
    and the identity request's real-time waits (other processes and sockets don't run on a fake clock)."""
    allowed = {"clock.py": 99, "token.py": 2, "filecache.py": 3, "http.py": 3}
    found = {}
    for path in (PACKAGE / "core").glob("*.py"):
        count = len(re.findall(r"\btime\.(?:time|monotonic|sleep)\(|\b_cond\.wait\(", path.read_text()))
        if count > allowed.get(path.name, 0):
            found[path.name] = count
    assert found == {}


def test_the_renewal_schedules_of_the_adapters_read_the_runtimes_clock():
    """The Redis re-AUTH schedule and sweeper, Celery's due checks and the delegation keys read the
    runtime's clock (``on_fake_clock`` moves them all); none reads the system clock itself. Allowed: the
    PubSub health-check deadline of our connections, which redis-py compares with the real monotonic
    clock (cache/connection.py)."""
    allowed = {"django_azure_mi.cache.connection": 1}
    found = {}
    for package in ("cache", "celery", "storage"):
        for path in (PACKAGE / package).glob("*.py"):
            text = path.read_text()
            count = len(re.findall(r"\btime\.(?:time|monotonic)\(|datetime\.now\(", text))
            if count > allowed.get(module_name(path), 0):
                found[module_name(path)] = count
    assert found == {}


def test_no_fix_says_see_the_error_above():
    """A fix names an action: "see the error above" sent a new user back to an error the diagnosis should
    have read (and on the status page there is no error above)."""
    found = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "error above" in path.read_text().lower()
    ]
    assert found == []
