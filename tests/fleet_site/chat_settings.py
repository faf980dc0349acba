"""A websocket chat site for tests/test_websockets.py: Django Channels with our channel layer on the Redis
stand-in, from the CHAT_CONFIG environment variable the test writes."""

import json
import os

_config = json.loads(os.environ["CHAT_CONFIG"])

SECRET_KEY = "chat-test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "channels", "django_azure_mi"]
DATABASES: dict = {}
USE_TZ = True
ASGI_APPLICATION = "chat_app.application"
CHANNEL_LAYERS = {"default": _config["layer"]}
AZURE_MANAGED_IDENTITY = _config.get("identity", {})
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,  # the servers' own (uvicorn.error: exceptions in the application)
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_azure_mi": {"handlers": ["console"], "level": _config.get("log_level", "INFO")},
        "channels_redis": {"handlers": ["console"], "level": "INFO"},  # "… over capacity in group …"
    },
}
