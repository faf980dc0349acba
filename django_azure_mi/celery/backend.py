"""The Celery result backend on Entra-only Redis: Celery's ``RedisBackend`` with managed-identity AUTH and
re-AUTH.

Extension point: a ``RedisBackend`` subclass named in ``result_backend`` as ``module:Class+URL`` (Celery's
documented form for a custom backend class; Celery >= 5.5). Its pool is an
:class:`~django_azure_mi.cache.EntraConnectionPool`: connections AUTH with (object id, token) and re-AUTH
before expiry (before their next command, or in the pool when idle). The pub/sub connection that
``AsyncResult.get()`` listens on cannot AUTH while subscribed (RESP2): when Azure closes it at expiry,
Celery's result consumer reconnects, subscribes again and fetches the results it may have missed (MGET),
so no result is lost.

    CELERY_RESULT_BACKEND = "django_azure_mi.celery.backend:RedisBackend+rediss://<name>.redis.cache.windows.net:6380/1"
    CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"managed_identity": {"username": "<object id>"}}  # optional

On Azure Managed Redis (``*.redis.azure.net``, or ``"cluster": "auto"``/``True`` in the transport options)
the keys get the hash-tag prefix ``{celery}:`` unless ``global_keyprefix`` names another one with a hash tag,
and the pool connects to the node serving its slot (:mod:`django_azure_mi.cache.slots`).

Unlike stock Celery, ``rediss://`` needs no ``ssl_cert_reqs`` query parameter: the server's certificate is
verified by default (Azure's verify against the default trust store).
"""

from __future__ import annotations

import logging
from typing import Any, Final

import redis
from celery.backends import redis as celery_redis

from ..cache.auth import check_location, check_transport, parse_options
from ..cache.connection import EntraConnectionMixin
from ..cache.slots import pinned_slot, pool_for
from ..diagnostics import SettingError
from . import SPEC

WHERE: Final = "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS"

logger = logging.getLogger("django_azure_mi.celery")


class ResultConsumer(celery_redis.ResultConsumer):  # type: ignore[misc]
    """Celery's pub/sub result consumer, which replaces its connection while its token is due (it cannot
    AUTH while subscribed): Celery's own reconnect, which subscribes again and fetches with MGET the
    results published meanwhile, before Azure would close the connection at expiry."""

    def drain_events(self, timeout: float | None = None) -> None:
        self._replace_if_due()
        super().drain_events(timeout)

    def consume_from(self, task_id: str) -> None:
        # A process that sends tasks and never waits for results (celery beat, a web view) subscribes on
        # each send and never drains: this is its only chance to replace the connection.
        self._replace_if_due()
        super().consume_from(task_id)

    def _replace_if_due(self) -> None:
        old = self._pubsub
        connection = getattr(old, "connection", None)
        if isinstance(connection, EntraConnectionMixin) and connection.entra_due():
            logger.info("Celery results: replacing the pub/sub connection before its token expires")
            # Celery's reconnect resets the pool, which forgets its connections without closing them:
            # close the idle ones (and the old subscription) so that no socket outlives its token unseen
            self.backend.client.connection_pool.disconnect(inuse_connections=False)
            self._reconnect()
            old.close()


class RedisBackend(celery_redis.RedisBackend):  # type: ignore[misc]
    """Celery's Redis result backend with managed-identity sign-in (see the module docstring)."""

    ResultConsumer = ResultConsumer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = self.app.conf.get("result_backend_transport_options") or {}
        self.entra_settings = parse_options(
            options.get("managed_identity"), WHERE, SPEC, "CELERY_RESULT_BACKEND"
        )
        for key, setting in (("password", "redis_password"), ("username", "redis_username")):
            if self.connparams.get(key):
                raise SettingError(
                    "E050",
                    f"Celery's {setting} (or the result backend URL) sets a {key} while the result backend "
                    "signs in with a managed identity.",
                    "Remove it: the identity's object id and token are sent instead.",
                )
        self.connparams.pop("credential_provider", None)
        connection_class = self.connparams.get("connection_class", redis.Connection)
        check_transport(connection_class, self.connparams, self.entra_settings, "CELERY_RESULT_BACKEND")
        # on a sharded Redis (Azure Managed Redis): every key under one hash tag (chords run transactions
        # over several keys; results are read with MGET), the pool on the node serving its slot
        prefix, self.entra_slot = pinned_slot(options, WHERE, self.url or "")
        self.entra_prefix = options.get("global_keyprefix") or prefix or ""
        if prefix is not None and not options.get("global_keyprefix"):  # Celery applied the user's own
            tag: bytes = self.key_t(prefix)
            for name in ("task_keyprefix", "group_keyprefix", "chord_keyprefix"):
                setattr(self, name, tag + getattr(self, name))

    def _params_from_url(self, url: str, defaults: dict[str, Any]) -> dict[str, Any]:
        check_location(url, "CELERY_RESULT_BACKEND")
        if url.startswith("rediss://") and "ssl_cert_reqs" not in url and "ssl_cert_reqs" not in defaults:
            defaults = {**defaults, "ssl_cert_reqs": "required"}  # verified, as redis-py's default
        params: dict[str, Any] = super()._params_from_url(url, defaults)
        return params

    def _get_pool(self, **params: Any) -> Any:
        return pool_for(self.entra_slot, entra_settings=self.entra_settings, **params)
