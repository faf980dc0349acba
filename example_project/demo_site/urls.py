from django.urls import include, path
from notes import views

urlpatterns = [
    path("", views.index, name="index"),
    path("status", views.status, name="status"),
    path("health/", include("django_azure_mi.urls")),
]
