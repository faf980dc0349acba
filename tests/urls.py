from django.urls import include, path

urlpatterns = [path("health/", include("django_azure_mi.urls"))]
