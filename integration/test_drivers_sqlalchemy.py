"""SQLAlchemy 2 through pyproxy, over PyMySQL and over mysqlclient: Core and an ORM model."""

from __future__ import annotations

import datetime
import decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import orm

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("bounded")

DIALECTS = ["pymysql", "mysqldb"]



@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    pytest.importorskip({"pymysql": "pymysql", "mysqldb": "MySQLdb"}[request.param])
    return request.param


def multi_statements_flag(dialect: str) -> int:
    if dialect == "pymysql":
        from pymysql.constants import CLIENT  # noqa: PLC0415
    else:
        from MySQLdb.constants import CLIENT  # noqa: PLC0415
    return CLIENT.MULTI_STATEMENTS | CLIENT.MULTI_RESULTS


def make_engine(proxy: servers.ProxyProcess, dialect: str, password: str = drivers.APP_PASSWORD,
                **connect_args: Any) -> sa.Engine:
    url = sa.URL.create(f"mysql+{dialect}", username=drivers.APP_USER, password=password,
                        host=proxy.host, port=proxy.port, database=drivers.APP_DATABASE,
                        query={"charset": "utf8mb4"})
    args: dict[str, Any] = {"connect_timeout": 10, "read_timeout": drivers.IO_TIMEOUT,
                            "write_timeout": drivers.IO_TIMEOUT}
    args.update(connect_args)
    # pool_pre_ping: every checkout pings (COM_PING) through the proxy first.
    return sa.create_engine(url, connect_args=args, pool_pre_ping=True, pool_size=3)


def model_for(table: str) -> type:
    """A mapped class on its own table (one per test: the server is shared by the session)."""

    class Base(orm.DeclarativeBase):
        pass

    class Order(Base):
        __tablename__ = table
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        customer: orm.Mapped[str] = orm.mapped_column(sa.String(100))
        amount: orm.Mapped[decimal.Decimal | None] = orm.mapped_column(sa.Numeric(12, 4))
        placed: orm.Mapped[datetime.datetime | None] = orm.mapped_column(sa.DateTime)
        note: orm.Mapped[str | None] = orm.mapped_column(sa.Text)

    return Order


def test_plain_queries(proxy: servers.ProxyProcess, dialect: str) -> None:
    table = drivers.unique_table(f"sa_{dialect}_plain")
    engine = make_engine(proxy, dialect)
    try:
        with engine.connect() as conn:
            assert tuple(conn.execute(sa.text(drivers.LITERAL_SELECT)).one()) == \
                drivers.LITERAL_EXPECTED
            conn.exec_driver_sql(drivers.SAMPLE_DDL.format(table=table))
            conn.exec_driver_sql(drivers.sample_insert(table), drivers.SAMPLE_ROWS)
            conn.commit()
            rows = conn.exec_driver_sql(drivers.SAMPLE_SELECT.format(table=table)).all()
            assert [drivers.normalise_row(r) for r in rows] == drivers.SAMPLE_ROWS
            found = conn.execute(sa.text(f"SELECT id FROM {table} WHERE name = :n"),
                                 {"n": drivers.EMOJI_TEXT}).scalar_one()
            assert found == 2
        # Checked out again (pre-ping, rollback-on-return): the pooled connection still works.
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM " + table)).scalar_one() == 4
    finally:
        engine.dispose()


def test_orm_commit_and_rollback(proxy: servers.ProxyProcess, dialect: str) -> None:
    table = drivers.unique_table(f"sa_{dialect}_orm")
    Order = model_for(table)
    engine = make_engine(proxy, dialect)
    observer = make_engine(proxy, dialect)
    placed = datetime.datetime(2024, 5, 17, 8, 30, 15)

    def visible() -> list[tuple]:
        with observer.connect() as conn:
            return [tuple(r) for r in conn.execute(
                sa.text(f"SELECT id, customer, amount, placed, note FROM {table} ORDER BY id"))]

    try:
        Order.__table__.create(engine)
        with orm.Session(engine) as session:
            session.add_all([
                Order(id=1, customer="alice", amount=decimal.Decimal("10.5000"), placed=placed,
                      note=drivers.EMOJI_TEXT),
                Order(id=2, customer="bob", amount=None, placed=None, note=None),
            ])
            session.flush()  # sent, not committed
            assert visible() == []
            session.commit()
        assert visible() == [(1, "alice", decimal.Decimal("10.5000"), placed, drivers.EMOJI_TEXT),
                             (2, "bob", None, None, None)]

        with orm.Session(engine) as session:
            alice = session.get(Order, 1)
            alice.amount = decimal.Decimal("99.9900")
            session.add(Order(id=3, customer="carol \U0001F600", amount=decimal.Decimal("1")))
            session.delete(session.get(Order, 2))
            session.flush()
            assert session.scalar(sa.select(sa.func.count()).select_from(Order)) == 2
            assert len(visible()) == 2  # the other connection still sees the old rows
            session.rollback()
            assert session.get(Order, 1).amount == decimal.Decimal("10.5000")
        assert [r[0] for r in visible()] == [1, 2]

        with orm.Session(engine) as session, session.begin():
            session.add(Order(id=3, customer="carol \U0001F600", amount=decimal.Decimal("1")))
        with orm.Session(observer) as session:
            carol = session.get(Order, 3)
            assert carol.customer == "carol \U0001F600"
            assert carol.amount == decimal.Decimal("1.0000")
    finally:
        engine.dispose()
        observer.dispose()


def test_multi_statements(proxy: servers.ProxyProcess, dialect: str) -> None:
    table = drivers.unique_table(f"sa_{dialect}_multi")
    engine = make_engine(proxy, dialect, client_flag=multi_statements_flag(dialect))
    try:
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            cur = raw.cursor()
            cur.execute(drivers.multi_statement_sql(table))
            sets = drivers.collect_result_sets(cur)
            cur.close()
            assert sets == drivers.MULTI_STATEMENT_RESULTS
            conn.commit()
            assert conn.execute(sa.text(f"SELECT v FROM {table} WHERE id = 2")).scalar_one() == "c"
    finally:
        engine.dispose()


def test_load_data_local_infile(proxy: servers.ProxyProcess, dialect: str, tmp_path: Path,
                                db_server: servers.DbServer) -> None:
    table = drivers.unique_table(f"sa_{dialect}_infile")
    path, rows, total = drivers.write_infile(tmp_path)
    engine = make_engine(proxy, dialect, local_infile=True)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(drivers.INFILE_DDL.format(table=table))
            result = conn.exec_driver_sql(drivers.load_data_sql(path, table))
            assert result.rowcount == rows
        with engine.connect() as conn:
            count, qty = conn.execute(sa.text(f"SELECT COUNT(*), SUM(qty) FROM {table}")).one()
            assert (count, int(qty)) == (rows, total)
    finally:
        engine.dispose()
    assert drivers.admin_scalar(db_server, f"SELECT COUNT(*) FROM {table}") == rows


def test_blob_larger_than_16_mib(proxy: servers.ProxyProcess, dialect: str,
                                 db_server: servers.DbServer, tmp_path: Path) -> None:
    table = drivers.unique_table(f"sa_{dialect}_blob")
    data = drivers.blob_payload()
    if dialect == "pymysql":
        extra: dict[str, Any] = {"max_allowed_packet": drivers.MAX_ALLOWED_PACKET}
    else:
        options = tmp_path / "client.cnf"
        options.write_text(f"[client]\nmax_allowed_packet={drivers.MAX_ALLOWED_PACKET}\n")
        extra = {"read_default_file": str(options)}
    engine = make_engine(proxy, dialect, **extra)
    meta = sa.MetaData()
    blobs = sa.Table(table, meta, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("data", sa.LargeBinary(length=2**32 - 1), nullable=False))
    try:
        meta.create_all(engine)
        with engine.begin() as conn:
            conn.execute(blobs.insert(), {"id": 1, "data": data})
        drivers.check_blob_on_server(db_server, table, 1, data)
        with engine.connect() as conn:
            got = conn.execute(sa.select(blobs.c.data).where(blobs.c.id == 1)).scalar_one()
        assert len(got) == len(data) and got == data
    finally:
        engine.dispose()


def test_prepared_statements(dialect: str) -> None:
    pytest.skip(f"SQLAlchemy's mysql+{dialect} dialect binds parameters client-side: no "
                "server-side prepared statements (covered by mysql-connector and mysql2)")


def test_wrong_password(proxy: servers.ProxyProcess, dialect: str) -> None:
    engine = make_engine(proxy, dialect, password=drivers.WRONG_PASSWORD)
    try:
        with pytest.raises(sa.exc.OperationalError) as info:
            engine.connect()
        code, message = info.value.orig.args[:2]
        drivers.assert_access_denied(code, message)
    finally:
        engine.dispose()
    good = make_engine(proxy, dialect)
    try:
        with good.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        good.dispose()
