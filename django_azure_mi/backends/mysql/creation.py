"""Test databases: Django's MySQL creation, cloning (``manage.py test --parallel``) with our client.

Django's ``_clone_db`` pipes ``mysqldump`` into ``mysql`` with the arguments of *its own* client class
(``django.db.backends.mysql.client.DatabaseClient``, imported by name), which knows no token: both tools were
refused (1045) and every cloned database stayed empty. Ours takes them from the connection's client class
(:mod:`.client`: a fresh token in ``MYSQL_PWD``, the TLS flags), and stops the run on a failed clone, as
Django 6.0+ does.
"""

from __future__ import annotations

import os
import subprocess
import sys

from django.db.backends.mysql import creation


class DatabaseCreation(creation.DatabaseCreation):
    def _clone_db(self, source_database_name: str, target_database_name: str) -> None:
        args, env = self.connection.client.settings_to_cmd_args_env(self.connection.settings_dict, [])
        dump = ["mysqldump", *args[1:-1], "--routines", "--events", source_database_name]
        load = [*args[:-1], target_database_name]
        tools_env = {**os.environ, **(env or {})}
        with (
            subprocess.Popen(dump, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=tools_env) as dumping,
            subprocess.Popen(
                load, stdin=dumping.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=tools_env
            ) as loading,
        ):
            assert dumping.stdout is not None and dumping.stderr is not None and loading.stderr is not None
            dumping.stdout.close()  # the dump gets SIGPIPE if the load ends
            dump_errors = dumping.stderr.read().decode(errors="replace")
            load_errors = loading.stderr.read().decode(errors="replace")
        # the load first: when it fails, the dump fails too, on the closed pipe
        for tool, done, errors in (("mysql", loading, load_errors), ("mysqldump", dumping, dump_errors)):
            if done.returncode != 0:
                self.log(f"Got an error from {tool} when cloning the test database: {errors}")
                sys.exit(done.returncode)
