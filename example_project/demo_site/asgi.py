"""The example site's ASGI application: Django's views over HTTP and the live chat over websockets
(`uvicorn demo_site.asgi:application`, or Daphne; `make demo` serves it with uvicorn)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_site.settings")

from django.core.asgi import get_asgi_application

django_asgi = get_asgi_application()  # sets Django up before the consumers are imported

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402
from notes.consumers import ChatConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi,
        "websocket": AllowedHostsOriginValidator(URLRouter([path("ws/chat/", ChatConsumer.as_asgi())])),
    }
)
