"""MySQL backend with managed identity vs Django's MySQL backend with a password: same server, same run.

    python benchmarks/mysql.py [--rounds N]

Every alias connects over TLS to one token-checking MySQL stand-in (MariaDB behind its sign-in gateway, as
on Azure), on PyMySQL (``install_as_MySQLdb``):

* ours: our ENGINE with the managed identity's token (the gateway asks for it in clear, checks it, then
  signs in to MariaDB for it);
* the anchor of the goal: Django's ENGINE with a token as its PASSWORD (what sites do today: one token
  fetched at start-up, which expires), the same sign-in at the server, so the ratio is our ENGINE's own
  cost: fetching the current token, the TLS rule, the diagnosis;
* for information: Django's ENGINE with a password of the same length, which the gateway passes to
  MariaDB. The difference is the token sign-in at the server: the round trip in which Azure asks for the
  token in clear (``mysql_clear_password``), and the stand-in's token check (a signature verified in
  Python, in this process) and its own sign-in to MariaDB.

Runs are interleaved (ABBA) so that drift hits both. Prints the median per operation and the ratio ours /
anchor.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import django
import pymysql
from django.conf import settings

from benchmarks.postgres import compare, connect
from django_azure_mi.testing.imds import IMDSEmulator
from django_azure_mi.testing.mysql import MYSQL_RESOURCE, MySQLStandIn

USER = "app-identity"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pymysql.install_as_MySQLdb()
    with IMDSEmulator(ttl=3600) as imds, imds.patched_environ(), MySQLStandIn() as my:
        my.add_user(USER)
        my.attach(imds)
        password = "p" * len(imds.mint(MYSQL_RESOURCE).token)
        my.set_password("long_password", password)
        static_token = imds.mint(MYSQL_RESOURCE).token  # lives the run (1 h)
        databases = {
            "default": my.database_settings(USER),
            "static_token": {
                **my.database_settings(USER, PASSWORD=static_token),
                "ENGINE": "django.db.backends.mysql",
            },
            "password": {
                **my.database_settings("long_password", PASSWORD=password),
                "ENGINE": "django.db.backends.mysql",
            },
        }
        settings.configure(INSTALLED_APPS=["django_azure_mi"], DATABASES=databases)
        django.setup()
        from django.db import connections

        for alias in connections:
            connect(alias)()  # warm: the token cached
        compare(
            "new connection (TLS + token sign-in)",
            connect("default"),
            connect("static_token"),
            args.rounds,
            10,
            "<= 1.05 (anchor: Django's ENGINE with a static token)",
            anchor="static token",
        )
        compare(
            "new connection vs a password",
            connect("default"),
            connect("password"),
            args.rounds,
            10,
            "(for information: the token sign-in at the server included)",
        )
        print(f"IMDS requests during the run: {imds.request_count()}; token sign-ins: {my.sign_ins}")


if __name__ == "__main__":
    main()
