"""WSGI (gunicorn) and ASGI (uvicorn) entry points of the fleet site."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet_settings")

from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
asgi_application = get_asgi_application()
