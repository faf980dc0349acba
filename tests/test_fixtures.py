"""The docs' testing pattern (docs/testing.md), verbatim: the shipped fixtures test what they claim (the
stand-ins, not the settings' SQLite), and the docs show exactly this code
(``test_the_docs_show_this_code``)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

# --- docs: testing pattern (start)
from django.core.cache import caches
from django.core.files.base import ContentFile
from django.core.files.storage import storages


def test_orm(azure_databases, azure_postgres):
    connections = azure_databases()  # DATABASES["default"]: the stand-in, role app-identity
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone() == ("app-identity",)
    assert connections["default"].vendor == "postgresql"
    assert azure_postgres.sign_ins >= 1  # it signed in with a token from azure_imds


def test_cache(azure_redis, settings):
    settings.CACHES = {"default": azure_redis.cache_settings()}  # or cache_settings("builtin")
    caches["default"].set("greeting", "hello", 30)
    assert caches["default"].get("greeting") == "hello"


def test_storage(azure_storage):
    storage = storages.create_storage(azure_storage.storage_settings("media"))  # a STORAGES entry
    if not storage.client.exists():
        storage.client.create_container()
    name = storage.save("hello.txt", ContentFile(b"hello"))
    assert storage.open(name).read() == b"hello"


# --- docs: testing pattern (end)


def test_the_docs_show_this_code():
    source = inspect.getsource(inspect.getmodule(test_the_docs_show_this_code))
    code = re.search(r"# --- docs: testing pattern \(start\)\n(.*?)\n+# --- docs", source, re.S)[1]
    page = (Path(__file__).parent.parent / "docs" / "testing.md").read_text()
    assert f"```python\n{code.strip()}\n```" in page, "docs/testing.md's pattern drifted from this file"


def test_reader(azure_databases, azure_postgres, azure_imds):  # the docs' user-assigned example
    client_id = "11111111-2222-3333-4444-555555555555"
    azure_imds.add_identity(client_id)  # a user-assigned identity
    azure_postgres.add_role("reader", client_id=client_id)  # and its role
    reader = azure_postgres.database_settings("reader", client_id=client_id)
    connections = azure_databases(default="app-identity", reader=reader)
    with connections["reader"].cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone() == ("reader",)
