"""The chat site's ASGI application (uvicorn, Daphne): a websocket per client at /ws/<room>/; what a
client sends goes to everyone in its room through the channel layer (group_send), with the worker's pid."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chat_settings")

import django

django.setup()

from channels.generic.websocket import AsyncJsonWebsocketConsumer  # noqa: E402 (after setup)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()
        if self.room == "ready":  # which worker answered (the test waits until every one has)
            await self.send_json({"pid": os.getpid()})

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.room, self.channel_name)

    async def receive_json(self, content):
        await self.channel_layer.group_send(
            self.room, {"type": "chat.message", **content, "pid": os.getpid()}
        )

    async def chat_message(self, event):
        await self.send_json({k: v for k, v in event.items() if k != "type"})


application = ProtocolTypeRouter({"websocket": URLRouter([path("ws/<str:room>/", ChatConsumer.as_asgi())])})
