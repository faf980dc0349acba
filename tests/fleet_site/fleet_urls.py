"""Two views: a sync one (cache + ORM) for gunicorn, an async one (``await cache.aget/aset``, the ORM through
``sync_to_async``) for uvicorn."""

import os

from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.core.cache import cache
from django.http import JsonResponse
from django.urls import path


def sync_view(request):
    hits = cache.get("fleet-hits", 0) + 1
    cache.set("fleet-hits", hits, 60)
    return JsonResponse({"pid": os.getpid(), "users": User.objects.count(), "hits": hits})


async def async_view(request):
    hits = await cache.aget("fleet-ahits", 0) + 1
    await cache.aset("fleet-ahits", hits, 60)
    users = await sync_to_async(User.objects.count)()
    return JsonResponse({"pid": os.getpid(), "users": users, "hits": hits})


urlpatterns = [path("sync", sync_view), path("async", async_view)]
