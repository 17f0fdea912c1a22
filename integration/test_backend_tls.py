"""TLS towards the server ([backend] tls = "verify"), against a throwaway MariaDB started with
certificates from a CA the test makes (trustme): every connection pyproxy opens (the
start-up check, pooled ones, the target probes, its own side connections for stored code and
SET GLOBAL) runs TLS, proved by accounts the server only lets in over TLS (REQUIRE SSL).  A
wrong CA, a certificate for another name and a server without TLS are each refused with one
line naming the TLS failure, never used in plaintext.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)
from pyproxy.sandbox import ProgramNotFound, SandboxError, SandboxServer

trustme = pytest.importorskip("trustme")

pytestmark = pytest.mark.usefixtures("bounded")


class TlsOnlyServer(SandboxServer):
    """A sandbox whose accounts created for the tests may log in over TLS only."""

    def create_user(self, name: str, password: str, plugin: str = "mysql_native_password",
                    database: str | None = None) -> None:
        super().create_user(name, password, plugin=plugin, database=database)
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                for host in ("%", "localhost"):
                    cur.execute("ALTER USER %s@%s REQUIRE SSL", (name, host))
        finally:
            conn.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA; the server's certificate for 127.0.0.1 and localhost; another for db.internal
    only; and a CA that issued neither."""
    directory = tmp_path_factory.mktemp("backend-pki")
    ca, other = trustme.CA(), trustme.CA()
    files = {name: directory / f"{name}.pem" for name in ("ca", "other_ca", "cert", "key",
                                                          "named_cert", "named_key")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    other.cert_pem.write_to_path(str(files["other_ca"]))
    for (cert, key), names in (((files["cert"], files["key"]), ("127.0.0.1", "localhost")),
                               ((files["named_cert"], files["named_key"]), ("db.internal",))):
        issued = ca.issue_cert(*names)
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        key.write_bytes(issued.private_key_pem.bytes())
    return files


def _server(pki: dict[str, Path], cert: str, key: str) -> Iterator[TlsOnlyServer]:
    server = TlsOnlyServer(ssl_cert=str(pki[cert]), ssl_key=str(pki[key]), ssl_ca=str(pki["ca"]))
    try:
        server.start()
    except ProgramNotFound as exc:
        pytest.skip(str(exc))
    except SandboxError as exc:
        pytest.fail(f"mariadbd did not start with TLS: {exc}")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def tls_server(pki: dict[str, Path]) -> Iterator[TlsOnlyServer]:
    yield from _server(pki, "cert", "key")


@pytest.fixture(scope="module")
def named_server(pki: dict[str, Path]) -> Iterator[TlsOnlyServer]:
    yield from _server(pki, "named_cert", "named_key")


def start(server: Any, directory: Path, **backend: Any) -> servers.ProxyProcess:
    return servers.start_proxy(server, directory, backend=backend)


def refused_start(server: Any, directory: Path, **backend: Any) -> str:
    """Starts pyproxy expecting it to refuse; returns its output."""
    with pytest.raises(servers.ProxyStartError):
        start(server, directory, **backend)
    return (directory / "pyproxy.log").read_text()


def scalar(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()[0][0]


def test_every_backend_connection_runs_tls(tls_server: TlsOnlyServer, pki: dict[str, Path],
                                           tmp_path: Path) -> None:
    """pyproxy logs in over TLS at start, for pooled connections, its probes and its own side
    connections (the read of stored code before a CALL, the globals around a SET GLOBAL):
    the server would refuse any of them in plaintext."""
    proxy = start(tls_server, tmp_path / "p", tls="verify", ca=str(pki["ca"]))
    drivers_conn = proxy.connect()
    try:
        assert scalar(drivers_conn, "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS "
                                    "WHERE VARIABLE_NAME = 'Ssl_version'").startswith("TLSv1.")
        with drivers_conn.cursor() as cur:
            cur.execute("DROP PROCEDURE IF EXISTS tls_proc")
            cur.execute("CREATE PROCEDURE tls_proc() SELECT 'called'")
            cur.execute("CALL tls_proc()")
            assert cur.fetchall() == (("called",),)
            cur.execute("SET GLOBAL max_connect_errors = 1000")
            cur.execute("SELECT @@global.max_connect_errors")
            assert cur.fetchall() == ((1000,),)
    finally:
        drivers_conn.close()
    states = [event for event in drivers.log_events(proxy, "target_state") if event.get("state") == "up"]
    assert states, drivers.log_tail(proxy)
    text = proxy.log_text()
    assert "Access denied" not in text and "Traceback" not in text, drivers.log_tail(proxy, 60)


def test_server_name_is_checked(named_server: TlsOnlyServer, pki: dict[str, Path],
                                tmp_path: Path) -> None:
    """A certificate that names db.internal only: refused for 127.0.0.1 (the target's host),
    accepted with server_name = "db.internal"."""
    output = refused_start(named_server, tmp_path / "host", tls="verify", ca=str(pki["ca"]))
    lines = [line for line in output.splitlines() if "TLS to" in line]
    assert len(lines) == 1 and "failed" in lines[0], output
    proxy = start(named_server, tmp_path / "named", tls="verify", ca=str(pki["ca"]),
                  server_name="db.internal")
    conn = proxy.connect()
    try:
        assert scalar(conn, "SELECT 1") == 1
    finally:
        conn.close()


def test_wrong_ca_is_refused(tls_server: TlsOnlyServer, pki: dict[str, Path], tmp_path: Path) -> None:
    """A CA that did not issue the server's certificate stops start-up with one line naming
    the TLS failure; with --no-backend-check pyproxy starts, its probes report the same error
    and a client's statement fails instead of running in plaintext."""
    output = refused_start(tls_server, tmp_path / "start", tls="verify", ca=str(pki["other_ca"]))
    lines = [line for line in output.splitlines() if line.startswith("pyproxy:")]
    assert len(lines) == 1, output
    assert f"TLS to {tls_server.host}:{tls_server.port}" in lines[0]
    assert "certificate verify failed" in lines[0], lines[0]

    proxy = servers.start_proxy(tls_server, tmp_path / "nocheck", args=["--no-backend-check"],
                                backend={"tls": "verify", "ca": str(pki["other_ca"])},
                                pool={"borrow_timeout": 2})
    with pytest.raises(pymysql.err.MySQLError):
        conn = proxy.connect()
        try:
            scalar(conn, "SELECT 1")
        finally:
            conn.close()
    probes = drivers.log_events(proxy, "probe_failed")
    assert probes and "certificate verify failed" in probes[0]["error"], drivers.log_tail(proxy)
    opens = drivers.log_events(proxy, "backend_open_failed")
    assert opens and all("TLS to" in event["error"] for event in opens), drivers.log_tail(proxy)


def test_server_without_tls_is_refused(db_server: servers.DbServer, pki: dict[str, Path],
                                       tmp_path: Path) -> None:
    """The test session's server runs without TLS: tls = "verify" refuses to start, saying the
    server offers no TLS, rather than logging in in plaintext."""
    if not isinstance(db_server, SandboxServer):
        pytest.skip("the server under test may offer TLS")
    output = refused_start(db_server, tmp_path / "p", tls="verify", ca=str(pki["ca"]))
    lines = [line for line in output.splitlines() if line.startswith("pyproxy:")]
    assert len(lines) == 1 and "offers no TLS" in lines[0], output
