"""The test suite's own server providers (integration/servers.py), tested from outside.

Each test runs a few integration tests in a pytest of its own, with the environment variables
a developer would set:

* ``PYPROXY_TEST_MYSQL`` pointed at an "existing server" (a throwaway mariadbd of this test,
  with accounts and a database of someone else's, ``app`` among them): the run passes and
  leaves every account, grant, password and database exactly as it found them;
* a provider asked for explicitly that cannot run (``PYPROXY_TEST_DOCKER=1`` without a Docker
  engine, ``PYPROXY_TEST_MYSQL`` at a closed port): the run fails instead of skipping.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from pyproxy.sandbox import SandboxServer, free_port

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300
#: Integration tests that create accounts of their own (the app and probe accounts, a second
#: user, one added by SIGHUP) and a database, and start pyproxy several times.
SUBSET = [
    "integration/test_kill.py",
    "integration/test_operations.py::test_sighup_reload_adds_a_user_without_dropping_clients",
    "integration/test_cli.py::test_wrong_backend_password",
]


def run_pytest(tests: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m pytest -q TESTS`` in the clone, with these PYPROXY_TEST_* settings only."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYPROXY_")}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=ROOT, env=environ, capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL, check=False)


def snapshot(conn: pymysql.connections.Connection) -> dict[str, object]:
    """Every account with its CREATE USER (password hash, plugin) and grants, and every
    database with its tables."""
    accounts: dict[str, object] = {}
    with conn.cursor() as cur:
        cur.execute("SELECT User, Host FROM mysql.user ORDER BY User, Host")
        for user, host in cur.fetchall():
            try:
                cur.execute("SHOW CREATE USER %s@%s", (user, host))
                created = cur.fetchone()[0]
                cur.execute("SHOW GRANTS FOR %s@%s", (user, host))
                accounts[f"{user}@{host}"] = (created, sorted(row[0] for row in cur.fetchall()))
            except pymysql.MySQLError as exc:
                # A host name entry under skip-name-resolve (root@<hostname>) is not loaded.
                accounts[f"{user}@{host}"] = exc.args
        cur.execute("SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA NOT IN ('mysql', 'information_schema', "
                    "'performance_schema', 'sys')")
        tables = sorted(cur.fetchall())
        cur.execute("SHOW DATABASES")
        databases = sorted(row[0] for row in cur.fetchall())
    return {"accounts": accounts, "databases": databases, "tables": tables}


@pytest.fixture
def existing_server() -> Iterator[tuple[SandboxServer, str]]:
    """A server standing for someone else's: an admin account for the tests, and an ``app``
    account and database (the names the tests used to take over) with data in it."""
    with SandboxServer() as server:
        password = secrets.token_urlsafe(12)
        conn = server.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", ("admin", "%", password))
                cur.execute("GRANT ALL PRIVILEGES ON *.* TO %s@%s WITH GRANT OPTION", ("admin", "%"))
                cur.execute("CREATE USER 'app'@'%' IDENTIFIED BY 'theirs'")
                cur.execute("CREATE DATABASE app")
                cur.execute("GRANT SELECT, INSERT ON app.* TO 'app'@'%'")
                cur.execute("CREATE TABLE app.orders (id INT PRIMARY KEY)")
                cur.execute("INSERT INTO app.orders VALUES (1), (2)")
        finally:
            conn.close()
        yield server, f"{server.host}:{server.port}:admin:{password}"


def test_existing_server_is_left_as_it_was(existing_server: tuple[SandboxServer, str]) -> None:
    server, spec = existing_server
    conn = server.connect()
    try:
        before = snapshot(conn)
        result = run_pytest(SUBSET, PYPROXY_TEST_MYSQL=spec)
        after = snapshot(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM app.orders ORDER BY id")
            orders = cur.fetchall()
    finally:
        conn.close()
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    assert " passed" in result.stdout and "skipped" not in result.stdout, output
    assert after == before
    assert orders == ((1,), (2,))


@pytest.mark.parametrize("env", [
    # DOCKER_HOST at a socket that does not exist: no engine, whatever this machine has.
    {"PYPROXY_TEST_DOCKER": "1", "DOCKER_HOST": "unix:///nonexistent/pyproxy-test/docker.sock"},
    {"PYPROXY_TEST_MYSQL": f"127.0.0.1:{free_port()}:root:x"},
], ids=["docker-without-engine", "existing-server-not-answering"])
def test_provider_asked_for_but_missing_fails_the_run(env: dict[str, str]) -> None:
    result = run_pytest(["integration/test_cli.py::test_bad_config_value_names_the_key"], **env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "1 error" in result.stdout, output
    assert "skipped" not in result.stdout, output
    assert "asks for a server that cannot run" in output, output
