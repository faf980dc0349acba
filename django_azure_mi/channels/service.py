"""Django Channels' Redis layers as a service of django-azure-mi (:mod:`django_azure_mi.services`): the
``CHANNEL_LAYERS`` entries whose BACKEND is one of ours, validated by ``manage.py check`` and probed by
``azure_check`` (identity, PING, a send/receive round trip on a new channel). Their tokens are the cache's
(the Redis scopes). Not part of readiness or warm-up yet."""

from __future__ import annotations

import uuid
from typing import Any, Final

from ..cache.diagnosis import diagnose
from ..services import Argument, CheckId, Selection, Service, Target, aliases

NAME: Final = "channels"
BACKENDS: Final = (
    "django_azure_mi.channels.RedisChannelLayer",
    "django_azure_mi.channels.RedisPubSubChannelLayer",
)
OPTION: Final = "MANAGED_IDENTITY"
ROUND_TRIP_TIMEOUT: Final = 10.0


def _ours(entry: dict[str, Any]) -> bool:
    return isinstance(entry, dict) and entry.get("BACKEND") in BACKENDS


def check(errors: list[Any]) -> None:
    """Each layer of ours: its identity option and its hosts (TLS, credentials, database, Sentinel)."""
    from django.conf import settings

    from ..checks import run_check

    for alias, entry in (getattr(settings, "CHANNEL_LAYERS", None) or {}).items():
        if _ours(entry):
            where = f"CHANNEL_LAYERS[{alias!r}]['CONFIG']"
            run_check(errors, where, validate_config, entry.get("CONFIG") or {}, where, entry["BACKEND"])


def validate_config(config: Any, where: str, backend: str = BACKENDS[0]) -> None:
    from channels_redis.utils import decode_hosts

    from ..cache.auth import parse_options
    from ..diagnostics import SettingError
    from .layers import core_prefix, receive_read_timeouts, sharded, validate_hosts

    if not isinstance(config, dict):
        raise SettingError(
            "E060", f"{where} must be a dict", "of channels_redis's options, e.g. {'hosts': […]}."
        )
    settings = parse_options(config.get(OPTION), where, url_setting=f"{where}['hosts']")
    try:
        hosts = decode_hosts(config.get("hosts"))
    except ValueError as exc:
        raise SettingError("E060", f"{where}['hosts']: {exc}", "Give a list of Redis URLs.") from None
    validate_hosts(hosts, settings, where)
    if backend == "django_azure_mi.channels.RedisChannelLayer":
        if sharded(config.get("cluster"), hosts, where):
            core_prefix(dict(config), where)
        receive_read_timeouts(hosts, where)


def targets(selection: Selection) -> list[Target]:
    return [
        Target(NAME, alias, f"CHANNEL_LAYERS[{alias!r}]", _probe(alias))
        for alias in aliases("CHANNEL_LAYERS", "channel-layer", selection, _ours)
    ]


def _probe(alias: str) -> Any:
    def probe(result: Any, deep: bool) -> None:
        import asyncio

        from channels.layers import channel_layers

        from ..cache.auth import get_auth
        from ..probes import identity_facts

        # A layer of its own, closed afterwards: the site's (channel_layers[alias]) belongs to the server's
        # event loop, and closing its pools would cut the live websockets' layer
        layer = channel_layers.make_backend(alias)
        entra = layer.entra_settings
        result.identity = identity_facts(entra.scope, entra.client_id)
        asyncio.run(_exercise(layer, result.details, deep))
        auth = get_auth(entra)
        result.details.update(reauths=auth.reauths, reauth_failures=auth.reauth_failures)

    return probe


async def _exercise(layer: Any, details: dict[str, Any], deep: bool) -> None:
    """PING every host; with ``deep``, a message sent to a new channel and received back."""
    import asyncio

    from .layers import RedisPubSubChannelLayer

    pubsub = isinstance(layer, RedisPubSubChannelLayer)
    try:
        if pubsub:  # a shard per host, on this loop's layer
            shards = layer._get_layer()._shards
            details["hosts"] = len(shards)
            for shard in shards:
                shard._ensure_redis()
                details["ping"] = bool(await shard._redis.ping())
        else:
            details["hosts"] = len(layer.hosts)
            for index in range(len(layer.hosts)):
                details["ping"] = bool(await layer.connection(index).ping())
        if deep:
            channel = await layer.new_channel("azure_check.")
            sent = {"type": "azure.check", "id": uuid.uuid4().hex}
            await layer.send(channel, sent)
            received = await asyncio.wait_for(layer.receive(channel), ROUND_TRIP_TIMEOUT)
            if received != sent:
                raise RuntimeError("the message received on the probe channel is not the one sent")
            details["send_receive"] = True
    finally:  # the probe's own layer: its connections closed (the pub/sub layer's flush closes its shards)
        await (layer.flush() if pubsub else layer.close_pools())


def summary(details: dict[str, Any]) -> str:
    steps = "PING, send/receive" if details.get("send_receive") else "PING"
    return f"{steps} ok on {details.get('hosts')} host(s)"


CHECK_IDS: Final = (
    CheckId(
        "E060",
        "`CHANNEL_LAYERS[…]['CONFIG']` of our layer: not a dict, `hosts` malformed, or Redis Sentinels "
        "(Azure has none)",
    ),
    CheckId(
        "E061",
        "the core channel layer's `prefix` has no hash tag while its Redis is Azure Managed Redis "
        "(its scripts would span hash slots)",
    ),
    CheckId(
        "E062",
        "the core channel layer's `socket_timeout` is not longer than its receive's blocking time (5 s): "
        "idle websockets would be closed",
    ),
)


def provision(plan: Any) -> None:
    """What Azure must have for it (``azure_setup``): .provision."""
    from .provision import provision as steps

    steps(plan, NAME, OPTION, _ours)


SERVICE: Final = Service(
    name=NAME,
    check_ids=CHECK_IDS,
    title="Channels",
    extra="channels",
    scope_of="redis",
    check=check,
    targets=targets,
    summary=summary,
    diagnose=diagnose,
    arguments=(Argument("channel-layer", "only this channel layer alias", setting="CHANNEL_LAYERS"),),
    purposes=frozenset({"check"}),
    provision=provision,
)
