"""Local Azure stand-ins for tests - ours, the demo's and our users'.

* :mod:`django_azure_mi.testing.imds` - the identity endpoint (IMDS / App Service), issuing real-looking JWTs.
* :mod:`django_azure_mi.testing.postgres` - a token-checking Postgres (TLS + scram).
* :mod:`django_azure_mi.testing.azurite` - Azurite with OAuth over HTTPS.
* :mod:`django_azure_mi.testing.keyvault` - Key Vault secrets over HTTPS with the 401-challenge flow.
* :mod:`django_azure_mi.testing.redis` - redis-server with ACLs behind an enforcer that closes connections
  whose token expired, like Azure.

The pytest plugin (``django_azure_mi.testing.pytest_plugin``, registered through the ``pytest11`` entry
point) provides the ``azure_imds`` fixture.
"""

from __future__ import annotations

import importlib


def reset_state() -> None:
    """Forget every token provider, credential and cached setting of this process (between tests)."""
    from .. import conf, identity, tokens

    # First the modules whose threads use the core (the Redis sweeper...), so that none of them can build a
    # provider or credential after the core was reset. Adapters whose extras are missing fail to import.
    for module in ("cache", "storage", "keyvault", "probes", "views"):
        try:
            adapter = importlib.import_module(f"django_azure_mi.{module}")
        except ImportError:
            continue
        adapter.reset()
    tokens.reset()
    identity.clear_cache()
    conf.clear_cache()
