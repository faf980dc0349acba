"""Settings of the example site - the configuration django-azure-mi documents.

Everything comes from environment variables (App Service application settings, Container Apps env, a
Kubernetes ConfigMap) and not one of them is a secret: the app signs in to Postgres, Redis, Blob Storage and
Key Vault with its managed identity. `make demo` sets them to local stand-ins.
"""

import os
from pathlib import Path

from django_azure_mi.keyvault import secret

BASE_DIR = Path(__file__).resolve().parent.parent
env = os.environ.get

# The identity: the system-assigned one by default; AZURE_CLIENT_ID picks a user-assigned one.
# Locally, with `az login`: AZURE_MI_CREDENTIAL=default.
AZURE_MANAGED_IDENTITY = {"CREDENTIAL": env("AZURE_MI_CREDENTIAL", "managed_identity")}

# From Key Vault when AZURE_KEY_VAULT_URL is set, else from DJANGO_SECRET_KEY or .env.
SECRET_KEY = secret("django-secret-key", env="DJANGO_SECRET_KEY", env_file=BASE_DIR / ".env")
DEBUG = env("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = env("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.staticfiles",
    "django_azure_mi",
    "notes",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "demo_site.urls"
WSGI_APPLICATION = "demo_site.wsgi.application"
ASGI_APPLICATION = "demo_site.asgi.application"  # HTTP and the live chat's websockets
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Azure Database for PostgreSQL: USER is the identity's Postgres role; no PASSWORD.
DATABASES = {
    "default": {
        "ENGINE": "django_azure_mi.backends.postgresql",
        "HOST": env("AZURE_POSTGRES_HOST", "localhost"),
        "PORT": env("AZURE_POSTGRES_PORT", "5432"),
        "NAME": env("AZURE_POSTGRES_NAME", "app"),
        "USER": env("AZURE_POSTGRES_USER", ""),
        "CONN_MAX_AGE": 600,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {"sslmode": "verify-full", "sslrootcert": env("AZURE_POSTGRES_SSLROOTCERT")}
        if env("AZURE_POSTGRES_SSLROOTCERT")
        else {},
    }
}

# Azure Database for MySQL, beside it when configured (`make demo ARGS=--mysql`): USER is the identity's
# Entra user (CREATE AADUSER); no PASSWORD. PyMySQL stands in for mysqlclient here.
if env("AZURE_MYSQL_HOST"):
    import pymysql

    pymysql.install_as_MySQLdb()
    DATABASES["mysql"] = {
        "ENGINE": "django_azure_mi.backends.mysql",
        "HOST": env("AZURE_MYSQL_HOST"),
        "PORT": env("AZURE_MYSQL_PORT", "3306"),
        "NAME": env("AZURE_MYSQL_NAME", "app"),
        "USER": env("AZURE_MYSQL_USER", ""),
        "OPTIONS": {"ssl": {"ca": env("AZURE_MYSQL_SSL_CA")}} if env("AZURE_MYSQL_SSL_CA") else {},
    }

# Azure Managed Redis (or Azure Cache for Redis) with Microsoft Entra authentication (django-redis). Our
# client class works on every AMR clustering policy; "auto" asks the endpoint once whether it is a cluster
# (the default on *.redis.azure.net hosts; the local stand-ins run on localhost).
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": env("AZURE_REDIS_URL", "rediss://localhost:10000/0"),
        "OPTIONS": {
            "CONNECTION_FACTORY": "django_azure_mi.cache.EntraConnectionFactory",
            "CLIENT_CLASS": "django_azure_mi.cache.EntraClient",
            "CLUSTER": "auto",
            "MANAGED_IDENTITY": {"USERNAME": env("AZURE_REDIS_USERNAME")},  # None: the token's object id
            **(
                {"CONNECTION_POOL_KWARGS": {"ssl_ca_certs": env("AZURE_REDIS_CA_CERTS")}}
                if env("AZURE_REDIS_CA_CERTS")
                else {}
            ),
        },
    }
}

# Django Channels (the live chat) on the same Redis, signed in with the same identity. "cluster": "auto" asks
# the endpoint once whether it is an Azure Managed Redis OSS cluster; on AMR every key of the layer goes under
# the hash tag {asgi} (one slot), which every clustering policy accepts.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "django_azure_mi.channels.RedisChannelLayer",
        "CONFIG": {
            "hosts": [
                {
                    "address": env("AZURE_REDIS_URL", "rediss://localhost:10000/0"),
                    **({"ssl_ca_certs": env("AZURE_REDIS_CA_CERTS")} if env("AZURE_REDIS_CA_CERTS") else {}),
                }
            ],
            "cluster": "auto",
            "MANAGED_IDENTITY": {"USERNAME": env("AZURE_REDIS_USERNAME")},
        },
    }
}

# Blob Storage for uploads, with signed (user delegation SAS) links for a private container.
STORAGES = {
    "default": {
        "BACKEND": "django_azure_mi.storage.AzureManagedIdentityStorage",
        "OPTIONS": {
            "account_name": env("AZURE_STORAGE_ACCOUNT"),
            "account_url": env("AZURE_STORAGE_ACCOUNT_URL"),  # custom endpoints; None: from account_name
            "azure_container": env("AZURE_STORAGE_CONTAINER", "media"),
            "expiration_secs": 3600,
            **(
                {"client_options": {"connection_verify": env("AZURE_STORAGE_CA_BUNDLE")}}
                if env("AZURE_STORAGE_CA_BUNDLE")
                else {}
            ),
        },
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_azure_mi": {"handlers": ["console"], "level": env("AZURE_MI_LOG_LEVEL", "WARNING")}},
}
