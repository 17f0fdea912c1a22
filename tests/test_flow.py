"""pyproxy.flow: commands sent ahead wait their turn; replies a client does not read hold back the rest."""

from __future__ import annotations

import vectors
from pyproxy.flow import QUEUE_LIMIT
from pyproxy.wire.commands import make_query
from pyproxy.wire.constants import SERVER_STATUS_AUTOCOMMIT
from pyproxy.wire.framing import frame
from pyproxy.wire.responses import make_ok_tracked
from test_frontend import SELECT, LoggedIn


class FlowTests(LoggedIn):
    def test_pipelined_commands_run_in_order(self) -> None:
        """Commands sent back to back wait their turn; each reply follows its command
        (after the user variable pins the session, pyproxy first gives its connection
        the client's own tracking settings)."""
        self.client.protocol.dataReceived(frame(make_query("SET @x=1"), 0) + frame(make_query(SELECT), 0))
        conn, server = self.backends.open()
        [first] = server.received()
        self.assertEqual(first.payload, make_query("SET @x=1"))
        server.send(vectors.USER_VARIABLE_OK)
        [restore] = server.received()
        self.assertTrue(restore.payload.startswith(b"\x03SET SESSION session_track_system_variables="))
        server.send(vectors.PING_OK)
        [second] = server.received()
        self.assertEqual(second.payload, make_query(SELECT))
        server.send(vectors.SELECT_DEOF)
        self.assertEqual(self.client.raw(), frame(make_ok_tracked(SERVER_STATUS_AUTOCOMMIT), 1)
                         + vectors.SELECT_DEOF)

    def test_client_far_ahead_is_paused(self) -> None:
        """A client that pipelines many commands is paused, and resumed once it is caught up."""
        conn, server = self.first_backend(self.client, "BEGIN")
        for _ in range(70):
            self.client.send(make_query("DO 1"))
        self.assertEqual(self.client.transport.producerState, "paused")
        server.send(vectors.BEGIN_OK)
        for _ in range(70):
            server.received()
            server.send(vectors.PING_OK)
        self.assertEqual(self.client.transport.producerState, "producing")

    def test_one_read_of_many_commands_holds_the_rest_as_bytes(self) -> None:
        """Reading stops at QUEUE_LIMIT queued commands, but one read may bring thousands
        of small ones: those past the limit stay in the framer as the bytes they came as
        (found by fuzz/fuzz_login.py, fuzz/regressions/login/one-read-past-the-queue-limit),
        and every one still runs, in order, as the replies come, with nothing more sent."""
        conn, server = self.first_backend(self.client, "BEGIN")
        commands = [make_query(f"DO {number}") for number in range(300)]
        self.client.protocol.dataReceived(b"".join(frame(command, 0) for command in commands))
        self.assertEqual(self.client.transport.producerState, "paused")
        self.assertEqual(len(self.client.protocol.commands.queue), QUEUE_LIMIT)
        held = self.client.protocol.framer.buffered()
        self.assertEqual(held, sum(len(frame(command, 0)) for command in commands[QUEUE_LIMIT:]))
        server.send(vectors.BEGIN_OK)
        for command in commands:
            [sent] = server.received()
            self.assertEqual(sent.payload, command)
            server.send(vectors.PING_OK)
        self.assertEqual(server.received(), [])
        self.assertEqual(self.client.protocol.framer.buffered(), 0)
        self.assertFalse(self.client.protocol.held)
        self.assertEqual(self.client.transport.producerState, "producing")
        self.assertEqual(len(self.client.received()), 301)

    def test_no_command_runs_while_replies_wait_unsent(self) -> None:
        """While the client's transport holds more than its buffer of unsent replies, its
        next command waits; it runs once they have drained."""
        self.client.protocol.pauseProducing()
        self.assertEqual(self.client.transport.producerState, "paused")
        self.client.query(SELECT)
        self.assertEqual(self.backends.waiting, [])
        self.client.protocol.resumeProducing()
        self.assertEqual(len(self.backends.waiting), 1)
        self.assertEqual(self.client.transport.producerState, "producing")

    def test_backend_is_not_read_while_the_client_is_behind(self) -> None:
        """Mid-reply, the backend connection is paused while the client is behind, and
        resumed when it has caught up (or when the reply ends)."""
        conn, server = self.first_backend(self.client, SELECT)
        self.client.protocol.pauseProducing()
        self.assertEqual(server.transport.producerState, "paused")
        self.client.protocol.resumeProducing()
        self.assertEqual(server.transport.producerState, "producing")
        self.client.protocol.pauseProducing()
        server.send(vectors.SELECT_DEOF)
        self.assertEqual(server.transport.producerState, "producing")  # the reply is whole
        self.assertEqual(self.pool.idle, [conn])

    def test_closing_while_paused_does_not_wait_for_the_producer(self) -> None:
        """A client closed while its replies wait: once they drain the transport closes,
        rather than waiting for pyproxy to stop producing."""
        self.client.protocol.pauseProducing()
        self.client.transport.disconnecting = True
        self.client.protocol.resumeProducing()
        self.assertIsNone(self.client.transport.producer)
