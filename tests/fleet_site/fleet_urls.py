"""Two views: a sync one (cache + ORM, and Blob Storage when configured) for gunicorn, an async one
(``await cache.aget/aset``, the ORM through ``sync_to_async``) for uvicorn; and the worker's threads."""

import os
import threading

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.files.storage import default_storage
from django.http import JsonResponse
from django.urls import path


def sync_view(request):
    hits = cache.get("fleet-hits", 0) + 1
    cache.set("fleet-hits", hits, 60)
    answer = {"pid": os.getpid(), "users": User.objects.count(), "hits": hits}
    if "django_azure_mi" in settings.STORAGES["default"]["BACKEND"]:
        answer["blob"] = default_storage.exists("fleet/probe.txt")  # a HEAD with the bearer token
        answer["signed"] = "sig=" in default_storage.url("fleet/probe.txt")  # the delegation key
    return JsonResponse(answer)


async def async_view(request):
    hits = await cache.aget("fleet-ahits", 0) + 1
    await cache.aset("fleet-ahits", hits, 60)
    users = await sync_to_async(User.objects.count)()
    return JsonResponse({"pid": os.getpid(), "users": users, "hits": hits})


def threads_view(request):
    return JsonResponse({"pid": os.getpid(), "threads": [t.name for t in threading.enumerate()]})


urlpatterns = [path("sync", sync_view), path("async", async_view), path("threads", threads_view)]
