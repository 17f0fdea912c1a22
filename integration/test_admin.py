"""The admin console of a real pyproxy in front of a sandbox server, driven from the
``mariadb`` CLI (batch and interactive, on a pseudo-terminal), PyMySQL and
mysql-connector-python; its controls seen working from pooled clients and /metrics;
``debug_statements_for`` seen in the log; the per-query counters of /metrics checked
against the bytes and statements a client sent through a counting relay."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import mysql.connector
import pymysql
import pymysql.cursors
import pytest

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)
from integration.relay import Relay
from integration.test_metrics import metrics_table, scrape, value
from pyproxy.sandbox import dump_toml, free_port

pytestmark = pytest.mark.usefixtures("bounded")

ADMIN_USER = "padmin"
ADMIN_PASSWORD = "console-pw-7"
COMMANDS = ("SHOW POOLS", "SHOW CLIENTS", "SHOW SERVERS", "SHOW TARGETS", "SHOW STATS", "SHOW CONFIG",
            "SHOW VERSION", "SHOW HELP")


def admin_table() -> dict[str, str]:
    return {"listen": f"tcp:{free_port()}:interface=127.0.0.1", "user": ADMIN_USER, "password": ADMIN_PASSWORD}


def admin_port(proxy: servers.ProxyProcess) -> int:
    return int(proxy.config["admin"]["listen"].split(":")[1])


@pytest.fixture
def proxy(make_proxy: Any) -> servers.ProxyProcess:
    return make_proxy(admin=admin_table(), metrics=metrics_table())


def console(proxy: servers.ProxyProcess, **kwargs: Any) -> pymysql.connections.Connection:
    return pymysql.connect(host="127.0.0.1", port=admin_port(proxy), user=ADMIN_USER, password=ADMIN_PASSWORD,
                           ssl_disabled=True, connect_timeout=5, **kwargs)


def admin_rows(proxy: servers.ProxyProcess, sql: str) -> list[dict[str, Any]]:
    with console(proxy, cursorclass=pymysql.cursors.DictCursor) as conn, conn.cursor() as cursor:
        cursor.execute(sql)
        return list(cursor.fetchall())


def stats(proxy: servers.ProxyProcess) -> dict[str, int]:
    return {row["name"]: row["value"] for row in admin_rows(proxy, "SHOW STATS")}


def cli(proxy: servers.ProxyProcess, sql: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    client = drivers.mariadb_client()
    assert client is not None
    return subprocess.run([client, "--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-P",
                           str(admin_port(proxy)), "-u", ADMIN_USER, f"-p{ADMIN_PASSWORD}", "--batch",
                           "--raw", "--connect-timeout=10", *extra, "-e", sql],
                          input=b"", capture_output=True, timeout=60, check=False)


def cli_table(proxy: servers.ProxyProcess, sql: str) -> list[dict[str, str]]:
    """The CLI's batch output (a header line, then tab-separated rows) as dicts."""
    result = cli(proxy, sql)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    lines = result.stdout.decode().splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def app_id(proxy: servers.ProxyProcess, before: set[int]) -> int:
    """The pyproxy id of the app client that connected since ``before`` was read."""
    ids = {row["id"] for row in admin_rows(proxy, "SHOW CLIENTS")} - before
    (found,) = ids
    return found


needs_cli = pytest.mark.skipif(drivers.mariadb_client() is None,
                               reason="the mariadb client is not installed (scripts/install-deps)")


@needs_cli
def test_cli_interactive_session(proxy: servers.ProxyProcess) -> None:
    """On a terminal the CLI reads @@version_comment at start and prints it; its tables
    come out as tables."""
    client = drivers.mariadb_client()
    assert client is not None
    with proxy.connect() as app, app.cursor() as cursor:
        cursor.execute("SELECT 1")  # a pool to show
    primary, secondary = pty.openpty()
    process = subprocess.Popen([client, "--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-P",
                                str(admin_port(proxy)), "-u", ADMIN_USER, f"-p{ADMIN_PASSWORD}"],
                               stdin=secondary, stdout=secondary, stderr=secondary, close_fds=True)
    os.close(secondary)
    output = b""
    try:
        os.write(primary, b"SHOW POOLS;\nSHOW VERSION;\nquit\n")
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.2)
            if ready:
                try:
                    output += os.read(primary, 65536)
                except OSError:
                    break
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(primary)
    text = output.decode(errors="replace")
    assert "pyproxy admin console" in text  # "Server version: ... pyproxy admin console"
    assert "| user" in text and "max_connections" in text and servers.APP_USER in text, text
    assert "| pyproxy" in text and process.returncode == 0, text


@needs_cli
def test_every_command_from_the_cli(proxy: servers.ProxyProcess, db_server: servers.DbServer) -> None:
    """Each SHOW from the CLI in batch mode; the numbers are the pool's and the client's."""
    with proxy.connect() as app:
        with app.cursor() as cursor:
            cursor.execute("SELECT 1")
        pools = cli_table(proxy, "SHOW POOLS")
        [pool] = [row for row in pools if row["user"] == servers.APP_USER]
        assert pool["target"] == f"{db_server.host}:{db_server.port}" and int(pool["borrows"]) >= 1
        assert int(pool["idle"]) + int(pool["in_use"]) >= 1
        [client] = cli_table(proxy, "SHOW CLIENTS")
        assert client["user"] == servers.APP_USER and client["state"] in ("idle", "holding")
        servers_ = cli_table(proxy, "SHOW SERVERS")
        assert servers_ and all(row["user"] == servers.APP_USER for row in servers_)
        assert {row["state"] for row in servers_} <= {"idle", "in_use", "checking", "closing"}
        [target] = cli_table(proxy, "SHOW TARGETS")
        assert target["writer"] == "1" and target["role"] == "writer"
        stat = {row["name"]: int(row["value"]) for row in cli_table(proxy, "SHOW STATS")}
        assert stat["com_query"] >= 1 and stat["client_connections"] == 1
        config = {row["key"]: row["value"] for row in cli_table(proxy, "SHOW CONFIG")}
        assert config["admin.password"] == "********" and config["users[0].password"] == "********"
        assert ADMIN_PASSWORD not in repr(config) and servers.APP_PASSWORD not in repr(config)
        [version] = cli_table(proxy, "SHOW VERSION")
        assert version["pyproxy"] and version["server"]
        assert len(cli_table(proxy, "SHOW HELP")) >= 13
    assert cli_table(proxy, "select @@version_comment limit 1") == [{"@@version_comment": "pyproxy admin console"}]
    bad = cli(proxy, "SHOW DATABASES")
    assert bad.returncode != 0 and b"1064" in bad.stderr and b"SHOW POOLS" in bad.stderr


def test_every_command_from_pymysql(proxy: servers.ProxyProcess) -> None:
    """PyMySQL connects (SET autocommit, its own chatter) and gets typed values: ints
    for LONGLONG columns, floats for DOUBLE, text for the rest."""
    with proxy.connect() as app:
        with app.cursor() as cursor:
            cursor.execute("SELECT 1")
        for command in COMMANDS:
            rows = admin_rows(proxy, command)
            assert rows, command
        [pool] = admin_rows(proxy, "SHOW POOLS")
        assert isinstance(pool["borrows"], int) and isinstance(pool["borrow_wait_p99_ms"], float)
        [client] = admin_rows(proxy, "SHOW CLIENTS")
        assert isinstance(client["id"], int) and isinstance(client["age_seconds"], float)
        servers_ = admin_rows(proxy, "SHOW SERVERS")
        assert all(isinstance(row["id"], int) and isinstance(row["age_seconds"], float) for row in servers_)
        with console(proxy) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT @@version_comment, @@autocommit")
            assert cursor.fetchone() == ("pyproxy admin console", 0)  # PyMySQL turned autocommit off
            conn.ping()
            conn.select_db("anything")
            with pytest.raises(pymysql.err.ProgrammingError) as raised:
                cursor.execute("SELECT * FROM t")
            assert raised.value.args[0] == 1064 and "SHOW POOLS" in raised.value.args[1]
            conn.rollback()
            cursor.execute("SHOW VARIABLES LIKE 'version_comment'")
            assert cursor.fetchall() == (("version_comment", "pyproxy admin console"),)


def test_mysql_connector_connects(proxy: servers.ProxyProcess) -> None:
    """mysql-connector-python (pure Python): its SET NAMES and autocommit at connect pass."""
    conn = mysql.connector.connect(host="127.0.0.1", port=admin_port(proxy), user=ADMIN_USER,
                                   password=ADMIN_PASSWORD, use_pure=True, ssl_disabled=True,
                                   connection_timeout=5)
    try:
        cursor = conn.cursor(dictionary=True)
        cursor.execute("SHOW TARGETS")
        [target] = cursor.fetchall()
        assert target["writer"] == 1 and target["state"] in ("up", "unknown")
        cursor.execute("SHOW STATS")
        assert all(isinstance(row["value"], int) for row in cursor.fetchall())
        conn.commit()
    finally:
        conn.close()


def test_wrong_password_and_app_account_refused(proxy: servers.ProxyProcess) -> None:
    with pytest.raises(pymysql.err.OperationalError) as raised:
        pymysql.connect(host="127.0.0.1", port=admin_port(proxy), user=ADMIN_USER, password="nope",
                        ssl_disabled=True)
    assert raised.value.args[0] == 1045
    with pytest.raises(pymysql.err.OperationalError) as raised:
        pymysql.connect(host="127.0.0.1", port=admin_port(proxy), user=servers.APP_USER,
                        password=servers.APP_PASSWORD, ssl_disabled=True)
    assert raised.value.args[0] == 1045


def test_pause_resume(proxy: servers.ProxyProcess) -> None:
    """PAUSE holds a pooled client's next statement until RESUME, as SIGUSR2 does."""
    with proxy.connect(autocommit=True) as app:
        with app.cursor() as cursor:
            cursor.execute("SELECT 1")
        with console(proxy) as conn, conn.cursor() as cursor:
            cursor.execute("PAUSE")
            assert stats(proxy)["paused"] == 1
            assert value(scrape(proxy), "pyproxy_paused") == 1
            done: list[float] = []
            started = time.monotonic()

            def resume_later() -> None:
                time.sleep(1.0)
                with console(proxy) as other, other.cursor() as resume:
                    resume.execute("RESUME")

            import threading

            thread = threading.Thread(target=resume_later)
            thread.start()
            with app.cursor() as app_cursor:
                app_cursor.execute("SELECT 2")
                done.append(time.monotonic() - started)
                assert app_cursor.fetchone() == (2,)
            thread.join()
            assert done[0] >= 0.9  # it waited for RESUME
            assert stats(proxy)["paused"] == 0
    assert drivers.log_events(proxy, "paused") and drivers.log_events(proxy, "resumed")


def test_reload(proxy: servers.ProxyProcess) -> None:
    """RELOAD re-reads the file: a new pool size shows in SHOW POOLS; a broken file is
    an error and the running configuration stays."""
    with proxy.connect() as app, app.cursor() as cursor:
        cursor.execute("SELECT 1")
    config = dict(proxy.config, pool={**proxy.config["pool"], "max_connections": 7})
    proxy.config_path.write_text(dump_toml(config))
    with console(proxy) as conn, conn.cursor() as cursor:
        cursor.execute("RELOAD")
        [pool] = admin_rows(proxy, "SHOW POOLS")
        assert pool["max_connections"] == 7
        proxy.config_path.write_text(dump_toml(dict(config, pool={**config["pool"], "max_connections": 0})))
        with pytest.raises(pymysql.err.OperationalError) as raised:
            cursor.execute("RELOAD")
        assert "reload failed" in raised.value.args[1] and "max_connections" in raised.value.args[1]
        [pool] = admin_rows(proxy, "SHOW POOLS")
        assert pool["max_connections"] == 7


def test_kill_client(proxy: servers.ProxyProcess) -> None:
    """KILL CLIENT closes that client (its open transaction rolled back); others go on."""
    before = {row["id"] for row in admin_rows(proxy, "SHOW CLIENTS")}
    victim = proxy.connect()
    victim_id = app_id(proxy, before)
    with proxy.connect() as bystander:
        with victim.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("SELECT 1")
        [row] = [row for row in admin_rows(proxy, "SHOW CLIENTS") if row["id"] == victim_id]
        assert row["in_transaction"] == 1 and row["backend_id"] is not None
        [server] = [s for s in admin_rows(proxy, "SHOW SERVERS") if s["id"] == row["backend_id"]]
        assert server["client_id"] == victim_id and server["state"] == "in_use"
        with console(proxy) as conn, conn.cursor() as cursor:
            cursor.execute(f"KILL CLIENT {victim_id}")
            with pytest.raises(pymysql.err.OperationalError) as raised:
                cursor.execute("KILL CLIENT 999999")
            assert raised.value.args[0] == 1094
        with pytest.raises(pymysql.err.OperationalError):
            with victim.cursor() as cursor:
                cursor.execute("SELECT 1")
        with bystander.cursor() as cursor:
            cursor.execute("SELECT 3")
            assert cursor.fetchone() == (3,)
    assert victim_id not in {row["id"] for row in admin_rows(proxy, "SHOW CLIENTS")}


def test_shutdown_graceful_and_immediate(make_proxy: Any) -> None:
    """SHUTDOWN GRACEFUL lets an open transaction finish; SHUTDOWN closes it at once."""
    for graceful in (True, False):
        proxy = make_proxy(admin=admin_table(), proxy={"drain_timeout": 20})
        app = proxy.connect()
        with app.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("SELECT 1")
        started = time.monotonic()
        with console(proxy) as conn, conn.cursor() as cursor:
            cursor.execute("SHUTDOWN GRACEFUL" if graceful else "SHUTDOWN")
        if graceful:
            time.sleep(0.5)
            assert proxy.process.poll() is None  # waiting for the transaction
            with app.cursor() as cursor:
                cursor.execute("COMMIT")
        assert proxy.process.wait(timeout=15) == 0
        assert time.monotonic() - started < 15
        app.close()
        assert drivers.log_events(proxy, "shutdown_requested")[0]["graceful"] is graceful


def test_debug_statements_for(proxy: servers.ProxyProcess) -> None:
    """SET debug_statements_for = 2: statements are logged as digests with the client,
    user and backend connection, never a value; after 2 s it switches itself off."""
    with proxy.connect() as app, app.cursor() as cursor:
        with console(proxy) as conn, conn.cursor() as admin:
            admin.execute("SET debug_statements_for = 2")
        cursor.execute("SELECT %s AS a, 'hidden-value' AS b, 123456789", ("other-secret",))
        cursor.execute("SELECT id FROM (SELECT 1 AS id) t WHERE id IN (1, 2, 3)")
        events = drivers.log_events(proxy, "statement")
        digests = [event["digest"] for event in events]
        assert "SELECT ? AS a, ? AS b, ?" in digests
        assert "SELECT id FROM (SELECT ? AS id) t WHERE id IN (...)" in digests
        assert all(event["user"] == servers.APP_USER and event["backend_id"] and event["client_id"]
                   for event in events)
        log = proxy.log_text()
        assert "hidden-value" not in log and "other-secret" not in log and "123456789" not in log
        deadline = time.monotonic() + 10
        while not drivers.log_events(proxy, "debug_statements_off") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert drivers.log_events(proxy, "debug_statements_off")[0]["reason"] == "time is up"
        count = len(drivers.log_events(proxy, "statement"))
        cursor.execute("SELECT 'after'")
        assert len(drivers.log_events(proxy, "statement")) == count


def test_debug_statements_for_from_the_config(make_proxy: Any) -> None:
    """[log] debug_statements_for turns it on at start; prepared statements are logged too."""
    proxy = make_proxy(log={"level": "debug", "format": "json", "debug_statements_for": 30})
    conn = mysql.connector.connect(host=proxy.host, port=proxy.port, user=servers.APP_USER,
                                   password=servers.APP_PASSWORD, database=servers.APP_DATABASE,
                                   use_pure=True, ssl_disabled=True)
    try:
        cursor = conn.cursor(prepared=True)
        cursor.execute("SELECT ? + 40", (2,))
        assert cursor.fetchall()[0][0] == 42
    finally:
        conn.close()
    prepares = [e for e in drivers.log_events(proxy, "statement") if e["command"] == "COM_STMT_PREPARE"]
    assert [e["digest"] for e in prepares] == ["SELECT ? + ?"]


@pytest.fixture
def relay(proxy: servers.ProxyProcess) -> Iterator[Relay]:
    relay = Relay((proxy.host, proxy.port))
    try:
        yield relay
    finally:
        relay.close()


def test_metrics_count_what_was_sent(proxy: servers.ProxyProcess, relay: Relay) -> None:
    """While a client runs 300 statements through a byte-counting relay, /metrics is read
    over HTTP; afterwards the new counters match exactly what the relay carried and what
    was sent: bytes each way, COM_QUERY and COM_STMT_EXECUTE counts, the latency
    histogram's count, logins over plaintext."""
    import threading
    import urllib.request  # noqa: F401 - scrape() uses it

    before = scrape(proxy)
    scrapes: list[dict[Any, float]] = []
    running = threading.Event()
    running.set()

    def keep_scraping() -> None:
        while running.is_set():
            scrapes.append(scrape(proxy))
            time.sleep(0.05)

    def scraped_meanwhile() -> None:
        # The load pauses until one more scrape has ended: the counters are read while
        # it runs however quick it is next to a scrape.
        seen = len(scrapes)
        deadline = time.monotonic() + 10
        while len(scrapes) <= seen:
            assert time.monotonic() < deadline, "no scrape answered in 10 s"
            time.sleep(0.01)

    watcher = threading.Thread(target=keep_scraping)
    watcher.start()
    try:
        conn = pymysql.connect(host="127.0.0.1", port=relay.port, user=servers.APP_USER,
                               password=servers.APP_PASSWORD, database=servers.APP_DATABASE,
                               ssl_disabled=True, autocommit=True)
        with conn.cursor() as cursor:
            for index in range(300):
                if index in (100, 200):
                    scraped_meanwhile()
                cursor.execute("SELECT %s, REPEAT('x', %s)", (index, index))
                assert cursor.fetchone() == (index, "x" * index)
        conn.close()
        prepared = mysql.connector.connect(host="127.0.0.1", port=relay.port, user=servers.APP_USER,
                                           password=servers.APP_PASSWORD, database=servers.APP_DATABASE,
                                           use_pure=True, ssl_disabled=True, autocommit=True)
        cursor = prepared.cursor(prepared=True)
        for index in range(20):
            cursor.execute("SELECT ?", (index,))
            cursor.fetchall()
        prepared.close()
    finally:
        running.clear()
        watcher.join()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        after = scrape(proxy)
        if after[("pyproxy_client_connections", frozenset())] == 0:
            break
        time.sleep(0.05)
    time.sleep(0.2)  # the relay has forwarded every byte it read
    after = scrape(proxy)

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert len(scrapes) >= 2  # read while the load ran
    assert delta("pyproxy_client_received_bytes_total") == relay.sent_upstream
    assert delta("pyproxy_client_sent_bytes_total") == relay.sent_downstream
    # PyMySQL's 300 statements and its COM_QUIT; the connector's own connect-time queries vary
    # by version, so its statements are counted as executes.
    assert delta("pyproxy_client_commands_total", command="COM_STMT_EXECUTE") == 20
    assert delta("pyproxy_client_commands_total", command="COM_STMT_PREPARE") == 1
    assert delta("pyproxy_client_commands_total", command="COM_QUERY") >= 300
    assert delta("pyproxy_client_commands_total", command="COM_QUIT") == 2
    relayed = delta("pyproxy_statement_latency_seconds_count")
    assert relayed >= 321
    assert delta("pyproxy_statement_latency_seconds_bucket", le="+Inf") == relayed
    assert delta("pyproxy_statement_latency_seconds_sum") > 0
    assert delta("pyproxy_client_logins_by_transport_total", transport="plaintext") == 2
    assert delta("pyproxy_client_logins_by_transport_total", transport="tls") == 0
    # Counters only grow between scrapes.
    series = [s[("pyproxy_client_received_bytes_total", frozenset())] for s in scrapes]
    assert series == sorted(series)
