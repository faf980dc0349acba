"""GeoDjango's PostGIS backend with Microsoft Entra ID tokens as passwords (ENGINE
``"django_azure_mi.backends.postgis"``): everything ``django_azure_mi.backends.postgresql`` does."""
