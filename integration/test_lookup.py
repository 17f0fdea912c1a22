"""Users looked up on a real server: pyproxy.lookup over a connection of pyproxy's own, logged in
as an account that has only SELECT on mysql.user (what README's "Security" section says to
grant), then a login to the server made from the hash read and a client's proof.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from integration import servers
from integration.drivers import bounded  # noqa: F401  (fixture)
from integration.own_reactor import run_until_done
from integration.raw_login import login
from pyproxy import auth
from pyproxy.backend import Target
from pyproxy.credential_sources import WRONG_PASSWORD, Credentials
from pyproxy.lookup import LookupSource, ServerQuery
from pyproxy.wire.responses import parse_err

pytestmark = pytest.mark.usefixtures("bounded")

LOOKUP_USER = servers.own_name("pyproxy_lookup")
LOOKUP_PASSWORD = "lookup_pw"


@pytest.fixture(scope="module")
def lookup_account(db_server: servers.DbServer) -> Iterator[str]:
    """The lookup account, with SELECT on mysql.user and nothing else."""
    db_server.create_user(LOOKUP_USER, LOOKUP_PASSWORD)
    conn = db_server.connect()
    try:
        with conn.cursor() as cur:
            for host in ("%", "localhost"):
                cur.execute("REVOKE ALL PRIVILEGES, GRANT OPTION FROM %s@%s", (LOOKUP_USER, host))
                cur.execute("GRANT SELECT ON mysql.user TO %s@%s", (LOOKUP_USER, host))
            cur.execute("SHOW GRANTS FOR %s@'%%'", (LOOKUP_USER,))
            grants = [row[0] for row in cur.fetchall()]
    finally:
        conn.close()
    assert len(grants) == 2 and "SELECT ON `mysql`.`user`" in grants[1], grants
    yield LOOKUP_USER


def looked_up(db_server: servers.DbServer, run: Any) -> Any:
    """Runs ``run(credentials, source)`` with a LookupSource whose queries go over a real
    connection, in a reactor of the test's own."""
    def scenario(reactor: Any) -> Any:
        query = ServerQuery(reactor, lambda: Target(db_server.host, db_server.port, LOOKUP_USER,
                                                     LOOKUP_PASSWORD, connect_timeout=10))
        source = LookupSource(query, reactor, ttl=30, min_gap=0)
        return defer_close(run(Credentials([source]), source), query)
    return run_until_done(scenario)


def defer_close(d: Any, query: ServerQuery) -> Any:
    return d.addBoth(lambda outcome: (query.close(), outcome)[1])


def test_lookup_then_login_from_the_hash(db_server: servers.DbServer, lookup_account: str) -> None:
    """A user only the server knows: its hash is read with the lookup account's SELECT, the
    client's proof checks against it, and the BackendLogin it gives logs in to the server."""
    user, password = servers.own_name("looked_up"), "lookup me"
    db_server.create_user(user, password)
    nonce = auth.new_nonce()

    def run(credentials: Credentials, source: LookupSource) -> Any:
        def verify(found: Any) -> Any:
            assert found is not None and found.source == "lookup"
            assert found.hashes == (auth.parse_stored_hash(auth.stored_hash(password.encode())),)
            return credentials.verify(found, auth.NATIVE, nonce, auth.native_proof(password.encode(), nonce),
                                      secure=False)
        return credentials.credential(user).addCallback(verify)

    verdict = looked_up(db_server, run)
    assert verdict.accepted and verdict.login.native_sha1 is not None
    reply = login(db_server.host, db_server.port, user, verdict.login.proof)
    assert reply[:1] == b"\x00", parse_err(reply)


def test_unknown_and_unsuitable_users(db_server: servers.DbServer, lookup_account: str) -> None:
    """A user the server does not have, and one with another plugin, are unknown to the lookup;
    a name that would break a quoted string is just a name."""
    other = servers.own_name("sha2_user")
    plugin = "ed25519" if db_server.flavor == "mariadb" else "caching_sha2_password"
    db_server.create_user(other, "pw", plugin=plugin)

    def run(credentials: Credentials, source: LookupSource) -> Any:
        names = [servers.own_name("nobody"), other, "x' OR '1'='1", "\\"]
        found: list[Any] = []
        d = credentials.credential(names[0])
        for name in names[1:]:
            d.addCallback(found.append).addCallback(lambda _, name=name: credentials.credential(name))
        return d.addCallback(found.append).addCallback(lambda _: found)

    assert looked_up(db_server, run) == [None, None, None, None]


def test_password_changed_on_the_server(db_server: servers.DbServer, lookup_account: str) -> None:
    """After ALTER USER, the new password fails against the cached hash, the source reads again,
    and the client is let in; the old one is refused from then on."""
    user = servers.own_name("changes_pw")
    db_server.create_user(user, "before")
    nonce = auth.new_nonce()

    def run(credentials: Credentials, source: LookupSource) -> Any:
        outcomes: list[str] = []

        def attempt(found: Any, password: bytes) -> Any:
            return credentials.verify(found, auth.NATIVE, nonce, auth.native_proof(password, nonce),
                                      secure=False).addCallback(
                lambda verdict: outcomes.append("ok" if verdict.accepted else verdict.reason))

        def change(_: object) -> None:
            conn = db_server.connect()
            try:
                with conn.cursor() as cur:
                    for host in ("%", "localhost"):
                        if db_server.flavor == "mariadb":
                            cur.execute("ALTER USER %s@%s IDENTIFIED BY %s", (user, host, "after"))
                        else:
                            cur.execute("ALTER USER %s@%s IDENTIFIED WITH mysql_native_password BY %s",
                                        (user, host, "after"))
            finally:
                conn.close()

        d = credentials.credential(user)

        def step(found: Any) -> Any:
            chain = attempt(found, b"before")
            chain.addCallback(change)
            chain.addCallback(lambda _: attempt(found, b"after"))
            chain.addCallback(lambda _: credentials.credential(user))
            chain.addCallback(lambda fresh: attempt(fresh, b"before"))
            return chain.addCallback(lambda _: outcomes)

        return d.addCallback(step)

    assert looked_up(db_server, run) == ["ok", "ok", WRONG_PASSWORD]
