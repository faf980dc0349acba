import pytest


@pytest.fixture(scope="session")
def django_db_modify_db_settings(azure_test_databases):
    """pytest-django creates its test databases on the token-checking Postgres stand-in."""
