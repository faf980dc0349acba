from django.db import connections
from django.http import HttpResponse
from django.urls import include, path


def connect(request, alias):
    """Opens a connection of ``alias``: the security tests render the debug page of its failures."""
    connections[alias].ensure_connection()
    return HttpResponse("connected")


def storage_save(request, alias):
    """Saves a file through ``STORAGES[alias]``: the debug page of its failures."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import storages

    storages[alias].save("probe.txt", ContentFile(b"x"))
    return HttpResponse("saved")


urlpatterns = [
    path("health/", include("django_azure_mi.urls")),
    path("boom/db/<str:alias>/", connect),
    path("boom/storage/<str:alias>/", storage_save),
]
