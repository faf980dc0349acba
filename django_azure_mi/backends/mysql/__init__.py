"""Django's MySQL backend with Microsoft Entra ID tokens as passwords (ENGINE
``"django_azure_mi.backends.mysql"``), for Azure Database for MySQL Flexible Server."""
