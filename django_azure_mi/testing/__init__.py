"""Local Azure stand-ins for tests - ours, the demo's and our users'.

* :mod:`django_azure_mi.testing.imds` - the identity endpoint (IMDS / App Service), issuing real-looking JWTs.
* :mod:`django_azure_mi.testing.postgres` - a token-checking Postgres: Azure's token checks in a gateway
  (:mod:`.pggateway`) in front of a real server.
* :mod:`django_azure_mi.testing.azurite` - Azurite with OAuth over HTTPS.
* :mod:`django_azure_mi.testing.keyvault` - Key Vault secrets over HTTPS with the 401-challenge flow.
* :mod:`django_azure_mi.testing.redis` - redis-server with ACLs behind an enforcer that closes connections
  whose token expired, like Azure.

* :mod:`django_azure_mi.testing.local` - all of them wired together outside pytest:
  ``python -m django_azure_mi.testing``.

The pytest plugin (``django_azure_mi.testing.pytest_plugin``, registered through the ``pytest11`` entry
point) provides the fixtures (``azure_imds``, ``azure_postgres``, ``azure_databases``, ``azure_redis``,
``azure_storage``, ``azure_keyvault``).
"""

from __future__ import annotations


def reset_state() -> None:
    """Forget every token provider, credential, cached setting and adapter component of this process
    (between tests): the runtime's reset."""
    from .. import runtime

    runtime.reset()
