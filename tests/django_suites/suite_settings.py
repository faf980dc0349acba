"""Settings for Django's own test runner (tests/runtests.py of Django's sdist): Django's own test settings
for that version (tests/test_sqlite.py), with DATABASES and CACHES for the configuration under test (ours or
stock, on the stand-ins) from the environment, as run.py writes them."""

import json
import os

from test_sqlite import *  # noqa: F403  # the version's own defaults (DEFAULT_AUTO_FIELD changed in 6.0)

try:  # the MySQL runs: PyMySQL as Django's MySQLdb, as a PyMySQL site's settings.py does
    import MySQLdb  # noqa: F401
except ImportError:
    try:
        import pymysql

        pymysql.install_as_MySQLdb()
    except ImportError:
        pass

_config = json.loads(os.environ["DJANGO_SUITE_CONFIG"])

DATABASES = _config["DATABASES"]
CACHES = _config["CACHES"]
