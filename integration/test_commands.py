"""The less common commands through pyproxy, with real drivers."""

from __future__ import annotations

import MySQLdb
import pymysql
import pytest
from pymysql.constants import COMMAND

from integration import servers


def test_statistics_field_list_ping(make_proxy) -> None:
    """COM_STATISTICS (mysqlclient's stat()), COM_FIELD_LIST and COM_PING answer as the server does."""
    proxy = make_proxy()
    conn = MySQLdb.connect(host=proxy.host, port=proxy.port, user=servers.APP_USER,
                           passwd=servers.APP_PASSWORD, db=servers.APP_DATABASE)
    assert conn.stat().startswith("Uptime:")
    conn.ping()
    conn.close()
    client = proxy.connect()
    with client.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS field_list_t (id INT PRIMARY KEY, label VARCHAR(10))")
    client._execute_command(COMMAND.COM_FIELD_LIST, b"field_list_t\x00")
    definitions = 0
    while not client._read_packet().is_eof_packet():
        definitions += 1
    assert definitions == 2
    client.ping(reconnect=False)
    with client.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone()[0] == 1
    client.close()


def test_init_db_is_carried_across_backends(make_proxy) -> None:
    """COM_INIT_DB (select_db) sticks to the client whichever backend connection it borrows next."""
    proxy = make_proxy(pool={"max_connections": 2})
    client = proxy.connect()
    client.select_db("mysql")
    others = [proxy.connect() for _ in range(2)]
    for other in others:
        other.begin()
        with other.cursor() as cur:
            cur.execute("SELECT DATABASE()")
            assert cur.fetchone()[0] == servers.APP_DATABASE
    for other in others:
        other.commit()
        other.close()
    with client.cursor() as cur:
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone()[0] == "mysql"
    client.close()


@pytest.mark.parametrize("command", [COMMAND.COM_SHUTDOWN, COMMAND.COM_DEBUG, COMMAND.COM_PROCESS_INFO,
                                     COMMAND.COM_BINLOG_DUMP, 0x60])
def test_unsupported_commands_get_an_error(make_proxy, command: int) -> None:
    """Commands a pooler must not pass on get error 1047 and the session goes on."""
    proxy = make_proxy()
    client = proxy.connect()
    client._execute_command(command, b"")
    with pytest.raises(pymysql.MySQLError) as info:
        client._read_packet()
    assert info.value.args[0] == 1047
    with client.cursor() as cur:
        cur.execute("SELECT 9")
        assert cur.fetchone()[0] == 9
    client.close()


def test_load_data_local_refused_like_a_server_would(make_proxy, db_server, tmp_path) -> None:
    """A client that did not enable LOCAL INFILE gets the server's error for LOAD DATA
    LOCAL through pyproxy, as directly; the session goes on."""
    data = tmp_path / "rows.csv"
    data.write_text("1\n2\n")
    proxy = make_proxy()

    def attempt(conn) -> int:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS no_local (v INT)")
            with pytest.raises(pymysql.MySQLError) as info:
                cur.execute(f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE no_local")
            cur.execute("SELECT 1")
            assert cur.fetchone()[0] == 1
        return info.value.args[0]

    direct = pymysql.connect(host=db_server.host, port=db_server.port, user=servers.APP_USER,
                             password=servers.APP_PASSWORD, database=servers.APP_DATABASE,
                             ssl_disabled=True)
    expected = attempt(direct)
    direct.close()
    through = proxy.connect()
    assert attempt(through) == expected in (4166, 3948, 1148)
    through.close()
