"""pyproxy.release: the rule that decides when a client's backend connection goes back."""

from __future__ import annotations

import attrs
from twisted.python.failure import Failure

import vectors
from pyproxy.release import GIVE_BACK, HOLD, KEEP, READ_BACK, verdict
from pyproxy.session import ClientSession, initial_state
from pyproxy.wire.constants import COM_RESET_CONNECTION
from test_frontend import SELECT, WARNING_OK, LoggedIn


class Connection:
    """What the rule reads of a backend connection."""

    def __init__(self, last_insert_id: int | None = 0, broken: bool = False) -> None:
        self.last_insert_id = last_insert_id
        self.broken = broken


def session(**state: object) -> ClientSession:
    return ClientSession(attrs.evolve(initial_state(45, None, True, False), **state))


def keeps_backend(s: ClientSession) -> bool:
    return verdict(s, Connection()) in (KEEP, HOLD)  # type: ignore[arg-type]


def test_keeps_backend_reasons() -> None:
    """Any one of pin, transaction, pending characteristics, locks or uncertainty keeps the backend."""
    assert not keeps_backend(session())
    for field in ("in_transaction", "pending_characteristics", "uncertain", "hold_next"):
        s = session()
        setattr(s, field, True)
        assert keeps_backend(s), field
    s = session()
    s.pin("x")
    assert keeps_backend(s)




def test_verdicts() -> None:
    """What dies with the connection keeps it; a follow-up holds it; an unknown
    LAST_INSERT_ID() is read back first (not on a broken connection); else it goes back."""
    s = session()
    assert verdict(s, Connection()) == GIVE_BACK  # type: ignore[arg-type]
    assert verdict(s, Connection(None)) == READ_BACK  # type: ignore[arg-type]
    assert verdict(s, Connection(None, broken=True)) == GIVE_BACK  # type: ignore[arg-type]
    s.hold_next = True
    assert verdict(s, Connection(None)) == HOLD  # type: ignore[arg-type]
    for field, value in (("in_transaction", True), ("cursors", 1), ("savepoint", True)):
        s = session()
        s.hold_next = True
        setattr(s, field, value)
        assert verdict(s, Connection(None)) == KEEP, field  # type: ignore[arg-type]


class ReleaseTests(LoggedIn):
    def test_held_connection_given_back_after_grace(self) -> None:
        """A statement with warnings keeps its connection for a follow-up (SHOW WARNINGS);
        a client that stays idle gives it back after hold_for_next_statement."""
        conn, server = self.first_backend(self.client, "SELECT 1/0")
        server.send(WARNING_OK)
        self.client.raw()
        self.assertEqual(self.pool.lent, {conn})
        self.proxy.reactor.advance(1.1)
        self.assertEqual(self.pool.idle, [conn])

    def test_pinned_client_leaving_resets_backend(self) -> None:
        """When a pinned client leaves, its backend is reset before going back to the pool."""
        conn, server = self.first_backend(self.client, "SET @x=1")
        server.send(vectors.USER_VARIABLE_OK)
        self.client.protocol.connectionLost(Failure(ConnectionError("bye")))
        [reset] = server.received()
        self.assertEqual(reset.payload, bytes((COM_RESET_CONNECTION,)))
        self.assertEqual(self.pool.idle, [])
        server.send(vectors.PING_OK)
        server.received()
        server.send(vectors.SESSION_SETUP)
        self.assertEqual(self.pool.idle, [conn])

    def test_binlog_connection_is_closed_not_reset(self) -> None:
        """BINLOG leaves a replication context a reset keeps (MDEV-32844): the connection
        is pinned, and closed when its client leaves, whether it leaves or resets."""
        for leave in ("quit", "reset"):
            conn, server = self.first_backend(self.client, "BINLOG 'AAAA'")
            server.send(vectors.PING_OK)
            self.client.raw()
            self.assertTrue(self.client.protocol.commands.pinned)
            if leave == "quit":
                self.client.protocol.connectionLost(Failure(ConnectionError("bye")))
            else:
                self.client.send(bytes((COM_RESET_CONNECTION,)))
            self.assertEqual([packet.payload for packet in server.received()], [b"\x01"], leave)  # COM_QUIT
            self.assertTrue(conn.broken, leave)
            self.assertNotIn(conn, self.pool.idle)
            self.client = self.connect()

    def test_client_leaves_mid_command(self) -> None:
        """A client gone while its command runs takes its backend with it: discarded, never reused."""
        conn, server = self.first_backend(self.client, SELECT)
        self.client.protocol.connectionLost(Failure(ConnectionError("bye")))
        self.assertTrue(conn.broken)
        self.assertEqual(self.pool.size(), 0)
        self.assertNotIn(self.client.protocol.id, self.proxy.clients)
