"""``path("health/", include("django_azure_mi.urls"))``: ``health/live`` and ``health/ready``."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "django_azure_mi"

urlpatterns = [
    path("live", views.liveness, name="live"),
    path("ready", views.readiness, name="ready"),
]
