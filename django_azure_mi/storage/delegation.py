"""User delegation keys for signed URLs: one per (account, identity), owned by the runtime, renewed by a
:class:`~django_azure_mi.core.refresher.Refresher` (single-flight, in the background, ahead of expiry).

Unlike django-storages' cache: the key's start is backdated for clock skew, its expiry is under Azure's
7-day limit, and 20 threads on a cold process make one request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Final

from azure.core.exceptions import HttpResponseError
from azure.storage.blob import UserDelegationKey

from .. import diagnostics
from ..core import policy
from ..core.clock import SYSTEM, Clock
from ..core.refresher import NotReady, Refresher
from .diagnosis import diagnose

KEY_LIFETIME: Final = timedelta(days=6)  # Azure allows 7 days at most; some servers reject exactly 7
KEY_BACKDATE: Final = timedelta(minutes=15)  # start in the past: clocks differ


@dataclass(frozen=True)
class DelegationKey:
    key: UserDelegationKey = field(repr=False)  # its value signs URLs: never in a repr
    start: datetime
    expiry: datetime
    renew_at: datetime


class DelegationKeys:
    """The user delegation key of one (account, identity). A runtime component."""

    def __init__(
        self,
        label: str,
        timeout: float,
        request: Callable[[datetime, datetime], UserDelegationKey],
        where: str = "STORAGES[…]",
        clock: Clock = SYSTEM,
    ) -> None:
        """``request(start, expiry)`` asks the service for a key (the SDK's ``get_user_delegation_key``)."""
        self.label, self.timeout, self.where, self.clock = label, timeout, where, clock
        self.requests = 0  # how many keys were requested (tests, benchmarks)
        self._request = request
        self.refresher: Refresher[DelegationKey] = Refresher(
            "user delegation key",
            self._fetch,
            label=label,
            schedule=lambda key: key.renew_at.timestamp(),
            usable_until=lambda key: key.expiry.timestamp(),
            describe=lambda key: f"expires={key.expiry.isoformat()}",
            clock=clock,
        )

    def get(self, needed_until: datetime) -> DelegationKey:
        """A key valid until at least ``needed_until``; warm, this takes no lock and makes no request."""
        refresher = self.refresher
        key = refresher.value
        if key is not None and needed_until <= key.expiry:
            if self.clock.time() >= refresher.poke_after:
                refresher.poke()
            return key
        try:
            key = refresher.get(self.timeout)
            if needed_until > key.expiry:  # a URL that outlives the key in hand: a new key now
                refresher.refresh(wait=True, timeout=self.timeout)
                key = refresher.get(self.timeout)
        except NotReady as exc:
            if refresher.last_exception is not None:
                raise refresher.last_exception from None
            if exc.reason != "timeout":
                raise TimeoutError(f"no user delegation key for {self.label} ({exc.reason})") from None
            raise TimeoutError(
                f"no user delegation key for {self.label} within {self.timeout:g}s "
                "(AZURE_MANAGED_IDENTITY['TIMEOUT']); the request goes on in the background."
            ) from None
        if needed_until > key.expiry:
            raise ValueError(
                f"a signed URL cannot outlive its user delegation key ({key.expiry.isoformat()})"
            )
        return key

    def _fetch(self, previous: DelegationKey | None) -> DelegationKey:
        now = datetime.fromtimestamp(self.clock.time(), timezone.utc)
        start, expiry = now - KEY_BACKDATE, now + KEY_LIFETIME
        self.requests += 1
        try:
            value = self._request(start, expiry)
        except HttpResponseError as exc:
            raise explained(exc, "get a user delegation key (signed URLs)", self.where) from None
        renew_at = datetime.fromtimestamp(
            policy.key_renew_at(now.timestamp(), expiry.timestamp()), timezone.utc
        )
        return DelegationKey(value, start, expiry, renew_at)

    def close(self) -> None:
        self.refresher.close()

    def after_fork(self) -> None:
        self.refresher.after_fork()


def explained(exc: HttpResponseError, action: str, where: str) -> HttpResponseError:
    """The same error with what to do about it (RBAC, audience), never a token."""
    from ..core.errors import describe_error

    failure = diagnose(exc, where)
    if failure.kind not in ("token-refused", "no-role"):
        return exc
    code = failure.facts.get("code") or ""
    message, failure = diagnostics.explain(
        f"Blob Storage refused to {action} ({exc.status_code} {code}): {describe_error(exc, 300)}", failure
    )
    error = HttpResponseError(message=message, response=exc.response)
    return diagnostics.attach(error, failure)  # type: ignore[return-value]
