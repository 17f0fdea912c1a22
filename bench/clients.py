"""The load generator's side of a connection: which driver, and one connection with as little
per-query overhead as the driver allows.

Used inside the load processes, so the drivers are imported only when needed: a process imports
the one it uses, and the parent only names it in the report's header.
"""

from __future__ import annotations

from typing import Any

from bench.errors import BenchError


def pick_driver(name: str) -> str:
    if name in ("auto", "mysqlclient"):
        try:
            import MySQLdb  # noqa: F401, PLC0415
            return "mysqlclient"
        except ImportError:
            if name == "mysqlclient":
                raise BenchError("--driver mysqlclient: MySQLdb is not importable "
                                 "(pip install mysqlclient)") from None
    import pymysql  # noqa: F401, PLC0415
    return "pymysql"


def driver_version(name: str) -> str:
    if name == "mysqlclient":
        import MySQLdb  # noqa: PLC0415
        import MySQLdb._mysql  # noqa: PLC0415
        return (f"mysqlclient {'.'.join(map(str, MySQLdb.version_info[:3]))} "
                f"(libmariadb/libmysqlclient {MySQLdb._mysql.get_client_info()})")
    import pymysql  # noqa: PLC0415
    return f"PyMySQL {pymysql.__version__}"


class Client:
    """One connection with the smallest per-query overhead the driver allows."""

    def __init__(self, driver: str, target: dict[str, Any], timeout: float = 30.0) -> None:
        self.driver = driver
        if driver == "mysqlclient":
            import MySQLdb  # noqa: PLC0415
            self.conn = MySQLdb.connect(
                host=target["host"], port=target["port"], user=target["user"],
                password=target["password"], database=target["database"], autocommit=True,
                connect_timeout=int(timeout), read_timeout=int(timeout),
                write_timeout=int(timeout))
        else:
            import pymysql  # noqa: PLC0415
            self.conn = pymysql.connect(
                host=target["host"], port=target["port"], user=target["user"],
                password=target["password"], database=target["database"], autocommit=True,
                connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout)
            self.cursor = self.conn.cursor()

    def query(self, sql: str) -> Any:
        if self.driver == "mysqlclient":
            self.conn.query(sql)
            return self.conn.store_result().fetch_row(0)
        self.cursor.execute(sql)
        return self.cursor.fetchall()

    def execute(self, sql: str) -> None:
        """Run a statement that returns no rows (BEGIN, UPDATE, COMMIT...)."""
        if self.driver == "mysqlclient":
            self.conn.query(sql)
            self.conn.store_result()
        else:
            self.cursor.execute(sql)

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail; nothing to do
            pass


def error_code(exc: BaseException) -> str:
    """'1040' for a MySQL error with a numeric code, else the exception's type name."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int):
        return str(args[0])
    return type(exc).__name__
