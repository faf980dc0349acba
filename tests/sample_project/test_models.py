import pytest
from django.contrib.auth.models import User
from django.db import connection


@pytest.mark.django_db
def test_saved_in_postgres(azure_test_databases):
    User.objects.create(username="ada")
    assert User.objects.filter(username="ada").exists()
    assert connection.vendor == "postgresql"
    assert connection.settings_dict["NAME"].startswith("test_")  # pytest-django's test database
    assert azure_test_databases.sign_ins >= 1  # it signed in with a token


@pytest.mark.django_db
def test_rolled_back_between_tests():
    assert not User.objects.filter(username="ada").exists()
    assert connection.vendor == "postgresql"
