SECRET_KEY = "sample-project-only"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_azure_mi"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
