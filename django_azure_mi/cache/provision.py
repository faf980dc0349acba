"""What Azure's Redis must have for each client of ours (:mod:`django_azure_mi.provision`): the caches here,
Celery's broker and results and the channel layers through :func:`redis_steps`.

Azure Managed Redis (``<name>.<region>.redis.azure.net``): Entra authentication is on by default; the
identity needs an access policy assignment of the database's ``default`` policy. Azure Cache for Redis
(``<name>.redis.cache.windows.net`` and the sovereign clouds' hosts): Microsoft Entra authentication turned
on, and a data access policy assignment (``Data Owner``: the cache, Celery's queues and pub/sub, the channel
layers' scripts) for the identity's object id, which is also the Redis user name it signs in as.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

from ..provision import Identity, Plan, Step

AMR: Final = re.compile(r"^([a-z0-9-]+)\.[a-z0-9-]+\.redis\.azure\.net$", re.I)
CLASSIC: Final = re.compile(
    r"^([a-z0-9-]+)\.redis\.cache\.(windows\.net|usgovcloudapi\.net|chinacloudapi\.cn)$", re.I
)
ACCESS_KINDS: Final = ("access-refused", "username-mismatch")


def provision(plan: Plan, name: str, uses_ours: Callable[[dict[str, Any]], bool]) -> None:
    """The steps of every cache that ``uses_ours``, as service ``name``."""
    from django.conf import settings

    from ..options import split_locations
    from .auth import parse_options
    from .spec import OPTION

    for alias, cache in (getattr(settings, "CACHES", None) or {}).items():
        if not uses_ours(cache):
            continue
        where = f"CACHES[{alias!r}]"
        entra = parse_options((cache.get("OPTIONS") or {}).get(OPTION), f"{where}['OPTIONS']")
        urls = split_locations(cache.get("LOCATION"))
        redis_steps(plan, name, plan.identity(entra.binding.client_id), entra.username, urls, where)


def redis_steps(
    plan: Plan, service: str, identity: Identity, username: str | None, urls: list[Any], where: str
) -> None:
    """The steps for one Redis client of ``identity`` reaching ``urls`` (configured at ``where``)."""
    group = plan.group()
    if username:
        plan.add(
            Step(
                service, identity.label, "note",
                f"{where} sets USERNAME {username!r}: it must be the identity's object id (not its client "
                "id); leave it out and the token's oid is used.", "", (where,),
                explains=("username-mismatch",),
            )
        )  # fmt: skip
    for url in urls:
        host = urlsplit(str(url)).hostname or ""
        amr, classic = AMR.match(host), CLASSIC.match(host)
        if not (amr or classic):
            plan.add(
                Step(
                    service, identity.label, "note",
                    f"{host or url!r} ({where}) is not an Azure Redis host name: give the identity access "
                    "on the Azure Redis behind it as below for its kind.", "", (where,),
                )
            )  # fmt: skip
            continue
        principal = plan.principal(identity, service)
        assignment = f"django{identity.short}"  # letters and digits: what both kinds of assignment accept
        if amr:
            plan.add(
                Step(
                    service, identity.label, "az", "az extension add --name redisenterprise --upgrade --yes",
                    "az redisenterprise is an azure-cli extension, not part of azure-cli itself (a script "
                    "can't answer its install prompt)", (where,),
                )
            )  # fmt: skip
            plan.add(
                Step(
                    service, identity.label, "az",
                    f"az redisenterprise database access-policy-assignment create -g {group} "
                    f"--cluster-name {amr[1]} --database-name default --access-policy-name default "
                    f"--access-policy-assignment-name {assignment} --object-id \"{principal}\"",
                    f"the identity may use the Azure Managed Redis {amr[1]} (its object id is the user name)",
                    (where,), explains=ACCESS_KINDS,
                )
            )  # fmt: skip
        else:
            assert classic is not None
            name = classic[1]
            plan.add(
                Step(
                    service, identity.label, "az",
                    f"az redis update -g {group} -n {name} --set redisConfiguration.aad-enabled=true",
                    f"the Azure Cache for Redis {name} accepts Microsoft Entra tokens", (where,),
                    explains=ACCESS_KINDS,
                )
            )  # fmt: skip
            plan.add(
                Step(
                    service, identity.label, "az",
                    f'az redis access-policy-assignment create -g {group} -n {name} --access-policy-name '
                    f'"Data Owner" --policy-assignment-name {assignment} --object-id "{principal}" '
                    f"--object-id-alias {assignment}",
                    f"the identity may use the Azure Cache for Redis {name} (its object id is the user name)",
                    (where,), explains=ACCESS_KINDS,
                )
            )  # fmt: skip
