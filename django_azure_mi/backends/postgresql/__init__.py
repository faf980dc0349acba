"""Django's PostgreSQL backend with Microsoft Entra ID tokens as passwords (ENGINE
``"django_azure_mi.backends.postgresql"``)."""
