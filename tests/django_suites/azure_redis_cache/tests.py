"""Django's RedisCacheTests, on django_azure_mi.cache.RedisCache (the stock class runs only when the stock
backend is configured: it finds its settings by BACKEND)."""

import unittest

from cache.tests import RedisCacheTests, caches_setting_for_tests, configured_caches, redis_excluded_caches
from django.test import override_settings

OURS = configured_caches.get("django_azure_mi.cache.RedisCache") or {"OPTIONS": {}}


@unittest.skipUnless(OURS.get("BACKEND"), "django_azure_mi.cache.RedisCache not configured")
@override_settings(CACHES=caches_setting_for_tests(base=OURS, exclude=redis_excluded_caches))
class AzureRedisCacheTests(RedisCacheTests):
    __unittest_skip__ = not OURS.get("BACKEND")  # the stock class is skipped in our run; this one is not

    @override_settings(
        CACHES=caches_setting_for_tests(
            base=OURS,
            exclude=redis_excluded_caches,
            OPTIONS={**OURS["OPTIONS"], "db": 5, "socket_timeout": 0.1, "retry_on_timeout": True},
        )
    )
    def test_redis_pool_options(self):
        RedisCacheTests.test_redis_pool_options.__wrapped__(self)  # without the stock settings
