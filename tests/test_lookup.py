"""pyproxy.lookup: the lookup query, reading its rows, and the cache, on a fake clock.

integration/test_lookup.py runs the same source over a real connection to a real server.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from structlog.testing import capture_logs
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pyproxy import auth
from pyproxy.backend import BackendError
from pyproxy.credential_sources import WRONG_PASSWORD, Credentials
from pyproxy.lookup import LookupSource, lookup_query, stored_hashes

OLD, NEW = auth.stored_hash(b"old-pw"), auth.stored_hash(b"new-pw")


def result(d: defer.Deferred[Any]) -> Any:
    return SynchronousTestCase().successResultOf(d)


@attrs.define
class FakeServer:
    """Answers lookup_query() from {user: rows}; ``held`` keeps answers back."""

    users: dict[str, list[tuple[str | None, ...]]]
    queries: list[str] = attrs.field(factory=list)
    held: list[defer.Deferred[Any]] | None = None
    failing: Exception | None = None

    def __call__(self, sql: str) -> defer.Deferred[list[tuple[str | None, ...]]]:
        self.queries.append(sql)
        if self.failing is not None:
            return defer.fail(self.failing)
        user = next((name for name in self.users if lookup_query(name) == sql), None)
        rows = self.users.get(user, []) if user is not None else []
        if self.held is not None:
            d: defer.Deferred[Any] = defer.Deferred()
            self.held.append(d)
            return d.addCallback(lambda _: rows)
        return defer.succeed(rows)


def make(server: FakeServer, **kwargs: Any) -> tuple[LookupSource, Clock]:
    clock = Clock()
    clock.advance(1000)
    return LookupSource(server, clock, **kwargs), clock


@pytest.mark.parametrize(("user", "literal"), [
    ("app", "X'617070'"), ("o'brien\\", "X'6f27627269656e5c'"), ("é", "X'c3a9'"), ("", "''")])
def test_query_names_the_user_as_a_hex_literal(user: str, literal: str) -> None:
    """The user goes in as a hex literal: no quote, backslash or sql_mode can change the query."""
    query = lookup_query(user)
    assert query == ("SELECT plugin, authentication_string FROM mysql.user "
                     f"WHERE User = CONVERT({literal} USING utf8mb4) AND Host <> ''")


def test_rows_give_native_hashes_only() -> None:
    """mysql_native_password rows (or MariaDB's old empty plugin) with a stored hash count, once
    each; other plugins, empty passwords and anything not a hash are left out."""
    rows = [("mysql_native_password", OLD), ("mysql_native_password", OLD.lower()), ("", NEW),
            ("caching_sha2_password", "$A$005$xyz"), ("ed25519", "ZmFrZQ"),
            ("mysql_native_password", ""), ("mysql_native_password", None), ("unix_socket", ""),
            (None, OLD[:20]), ("mysql_native_password",)]
    assert stored_hashes(rows) == (auth.parse_stored_hash(OLD), auth.parse_stored_hash(NEW))
    assert stored_hashes([]) == ()


def test_cached_for_the_ttl_known_or_not() -> None:
    """A user is read once per ttl, and so is "no such user"."""
    server = FakeServer({"app": [("mysql_native_password", OLD)]})
    source, clock = make(server, ttl=30)
    app = result(source.credential("app"))
    assert app.hashes == (auth.parse_stored_hash(OLD),) and app.source == "lookup"
    assert result(source.credential("ghost")) is None
    clock.advance(29)
    result(source.credential("app"))
    result(source.credential("ghost"))
    assert len(server.queries) == 2
    clock.advance(1)
    result(source.credential("app"))
    result(source.credential("ghost"))
    assert len(server.queries) == 4


def test_clients_arriving_together_share_one_query() -> None:
    """A storm of clients of one user makes one query; all get its answer."""
    server = FakeServer({"app": [("mysql_native_password", OLD)]}, held=[])
    source, _ = make(server)
    waiting = [source.credential("app") for _ in range(50)]
    assert len(server.queries) == 1
    server.held[0].callback(None)  # type: ignore[index]
    assert all(result(d).hashes == (auth.parse_stored_hash(OLD),) for d in waiting)


def test_password_changed_on_the_server() -> None:
    """The new password fails against the cached hash; the source reads again and lets the
    client in; another wrong password within min_gap does not make another query."""
    server = FakeServer({"app": [("mysql_native_password", OLD)]})
    source, clock = make(server, ttl=30, min_gap=1)
    credentials = Credentials([source])
    nonce = auth.new_nonce()
    app = result(credentials.credential("app"))
    server.users["app"] = [("mysql_native_password", NEW)]
    clock.advance(1)
    verdict = result(credentials.verify(app, auth.NATIVE, nonce, auth.native_proof(b"new-pw", nonce),
                                        secure=False))
    assert verdict.accepted and verdict.login.native_sha1 is not None
    assert len(server.queries) == 2
    wrong = result(credentials.verify(app, auth.NATIVE, nonce, auth.native_proof(b"nope", nonce),
                                      secure=False))
    assert wrong.reason == WRONG_PASSWORD and len(server.queries) == 2
    assert result(source.refresh("never-read")) is False


def test_failures_refuse_and_are_not_cached() -> None:
    """A lookup connection that fails refuses this client, logs the error without secrets, and
    the next client tries again."""
    server = FakeServer({"app": [("mysql_native_password", OLD)]},
                        failing=BackendError(1045, "28000", "Access denied for user 'lookup'"))
    source, _ = make(server)
    with capture_logs() as logs:
        assert result(source.credential("app")) is None
    assert logs[0]["event"] == "user_lookup_failed" and logs[0]["code"] == 1045
    server.failing = None
    assert result(source.credential("app")) is not None


def test_cache_is_bounded() -> None:
    """Clients naming ever new users cannot grow the cache past max_entries."""
    server = FakeServer({})
    source, _ = make(server, max_entries=3)
    for index in range(10):
        result(source.credential(f"user{index}"))
    assert len(source._cache) == 3
    result(source.credential("user9"))
    assert len(server.queries) == 10
