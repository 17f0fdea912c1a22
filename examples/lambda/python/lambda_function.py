"""AWS Lambda function (Python runtime, handler ``lambda_function.lambda_handler``)
that reaches MySQL through pyproxy with PyMySQL.

Environment: DB_HOST (pyproxy's address, e.g. an internal load balancer in front
of pyproxy instances), DB_PORT (3306), DB_USER, DB_PASSWORD, DB_NAME.  Package
PyMySQL with this file (``pip install pymysql -t .``), and put the function in
the VPC subnets that reach pyproxy.

The connection is opened on the first invocation and kept by the execution
environment for the next ones.  pyproxy lends it a database connection only
while a statement or transaction runs, so thousands of idle environments cost
the database nothing; if pyproxy closed it while the environment was frozen
(idle_client_timeout), the next invocation connects again.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pymysql

_connection: pymysql.connections.Connection | None = None


def _connect() -> pymysql.connections.Connection:
    global _connection
    if _connection is None or not _connection.open:
        _connection = pymysql.connect(
            host=os.environ["DB_HOST"],
            port=int(os.environ.get("DB_PORT", "3306")),
            user=os.environ["DB_USER"],
            password=os.environ["DB_PASSWORD"],
            database=os.environ["DB_NAME"],
            connect_timeout=5,
            autocommit=True,
        )
    return _connection


def _query(sql: str, params: tuple[Any, ...]) -> tuple[Any, ...]:
    global _connection
    for attempt in (1, 2):
        try:
            with _connect().cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchone()
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError):
            # A connection that died while the environment was frozen: once
            # more on a new one (a SELECT, safe to run again).  An error that
            # left the connection open is the server's answer: raised.
            if attempt == 2 or (_connection is not None and _connection.open):
                raise
            _connection = None
    raise AssertionError("unreachable")


def lambda_handler(event: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    name = (event or {}).get("name") or "world"
    greeting, database = _query("SELECT CONCAT('hello, ', %s), DATABASE()", (name,))
    return {"statusCode": 200, "body": json.dumps({"greeting": greeting, "database": database})}
