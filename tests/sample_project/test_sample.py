"""A user's tests on the shipped fixtures (docs/testing.md's pattern), run by tests/test_sample_project.py
with and without pytest-xdist."""

from django.core.cache import caches
from django.core.files.base import ContentFile
from django.core.files.storage import storages


def test_orm(azure_databases, azure_postgres):
    connections = azure_databases()
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone() == ("app-identity",)
    assert connections["default"].vendor == "postgresql"
    assert azure_postgres.sign_ins >= 1


def test_cache(azure_redis, settings):
    settings.CACHES = {"default": azure_redis.cache_settings()}
    caches["default"].set("greeting", "hello", 30)
    assert caches["default"].get("greeting") == "hello"


def test_storage(azure_storage):
    storage = storages.create_storage(azure_storage.storage_settings("media"))
    if not storage.client.exists():
        storage.client.create_container()
    name = storage.save("hello.txt", ContentFile(b"hello"))
    assert storage.open(name).read() == b"hello"


def test_settings_database_is_not_touched_by_the_fixture(azure_databases):
    from django.conf import settings

    azure_databases()
    assert settings.DATABASES["default"]["ENGINE"] == "django_azure_mi.backends.postgresql"
