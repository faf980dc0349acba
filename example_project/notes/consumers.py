"""The live chat of the example site: a websocket per browser at /ws/chat/, every message to everyone
through the channel layer (Django Channels on Entra-only Redis: no access key, tokens re-AUTHed)."""

from __future__ import annotations

import os

from channels.generic.websocket import AsyncJsonWebsocketConsumer

GROUP = "chat"


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def receive_json(self, content: dict, **kwargs: object) -> None:
        text = str(content.get("text", ""))[:500]
        if text:
            message = {"type": "chat.message", "text": text, "pid": os.getpid()}
            await self.channel_layer.group_send(GROUP, message)

    async def chat_message(self, event: dict) -> None:
        await self.send_json({"text": event["text"], "pid": event["pid"]})
