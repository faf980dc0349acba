SECRET_KEY = "tests-only-not-secret"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_azure_mi", "tests.testapp"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
ROOT_URLCONF = "tests.urls"
