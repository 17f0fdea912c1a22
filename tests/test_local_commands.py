"""pyproxy.local_commands: the commands pyproxy answers itself, over fake transports."""

from __future__ import annotations

import attrs

import vectors
from pyproxy import auth
from pyproxy.wire.commands import make_set_option
from pyproxy.wire.constants import COM_RESET_CONNECTION, COMMAND, MYSQL_OPTION_MULTI_STATEMENTS_OFF
from pyproxy.wire.framing import PacketFramer
from pyproxy.wire.handshake import make_change_user, parse_auth_switch_request
from test_frontend import LoggedIn, err_of


class LocalCommandTests(LoggedIn):
    def test_ping_answered_locally(self) -> None:
        """COM_PING from an idle client is answered by pyproxy (seq 1) without a backend."""
        self.client.send(b"\x0e")
        [ok] = self.client.received()
        self.assertEqual((ok.seq, ok.payload[0]), (1, 0))
        self.assertEqual(self.backends.waiting, [])

    def test_quit_closes(self) -> None:
        """COM_QUIT closes the connection without a reply."""
        self.client.send(b"\x01")
        self.assertTrue(self.client.closed)
        self.assertEqual(self.client.raw(), b"")

    def test_unknown_command(self) -> None:
        """An unknown command gets 1047 (08S01) at seq 1, like the server's, and the session goes on."""
        self.client.send(b"\x99")
        [err] = self.client.received()
        [server_err] = PacketFramer().feed(vectors.UNKNOWN_COMMAND_ERR)
        self.assertEqual(err_of(err), err_of(server_err))
        self.assertFalse(self.client.closed)
        self.client.send(b"\x0e")
        self.assertEqual(self.client.received()[0].payload[0], 0)

    def test_refused_command(self) -> None:
        """Server administration commands (COM_SHUTDOWN) are refused with 1047."""
        self.client.send(bytes((COMMAND.COM_SHUTDOWN,)))
        self.assertEqual(err_of(self.client.received()[0]), (1, 1047, "08S01"))

    def test_set_option(self) -> None:
        """COM_SET_OPTION is answered locally (OK 0xFE for DEPRECATE_EOF) and carried in the session."""
        self.client.send(make_set_option(MYSQL_OPTION_MULTI_STATEMENTS_OFF))
        [reply] = self.client.received()
        self.assertEqual((reply.seq, reply.payload[0]), (1, 0xFE))
        self.assertFalse(self.client.protocol.commands.session.state.multi_statements)  # type: ignore[union-attr]
        self.client.send(b"\x1b\x07\x00")
        self.assertEqual(err_of(self.client.received()[0])[1], 1047)

    def test_reset_connection(self) -> None:
        """COM_RESET_CONNECTION is answered locally and starts the session over."""
        self.client.protocol.commands.session.pin("test")  # type: ignore[union-attr]
        self.client.send(bytes((COM_RESET_CONNECTION,)))
        [ok] = self.client.received()
        self.assertEqual((ok.seq, ok.payload[0]), (1, 0))
        self.assertIsNone(self.client.protocol.commands.session.pin_reason)  # type: ignore[union-attr]


class ChangeUserTests(LoggedIn):
    """COM_CHANGE_USER gives up what the session held and runs the login phase again."""

    def change_user(self, user: str, password: str, plugin: str = auth.NATIVE) -> None:
        proof = auth.proof_for(plugin, password.encode(), self.client.greeting.auth_data) \
            if plugin in auth.CLIENT_PLUGINS else b""
        self.client.send(make_change_user(user, proof, None, 45, plugin, {}))

    def test_session_starts_over_as_the_new_user(self) -> None:
        """A pinned session's connection is reset before anyone else gets it; the client
        gets the OK at the next sequence id, as the other user, unpinned."""
        conn, server = self.first_backend(self.client, "SET @x = 1")
        server.send(vectors.USER_VARIABLE_OK)
        self.client.raw()
        self.change_user("nopw", "")
        [ok] = self.client.received()
        self.assertEqual((ok.seq, ok.payload[0]), (1, 0))
        [reset] = server.received()
        self.assertEqual(reset.payload, bytes((COM_RESET_CONNECTION,)))
        commands = self.client.protocol.commands
        self.assertEqual((commands.user, commands.pinned, commands.session.pin_reason), ("nopw", False, None))

    def test_wrong_password_keeps_the_connection_three_times(self) -> None:
        """As MariaDB (MDEV-3915): a refused COM_CHANGE_USER gets 1045 and the session
        starts over as the user it had, with its schema and character sets; after three
        refusals COM_CHANGE_USER is an unknown command, and the connection still serves."""
        commands = self.client.protocol.commands
        commands.session.state = attrs.evolve(commands.session.state, schema="app", character_set_client="latin1",
                                              variables=(("sql_mode", "ANSI"),))
        commands.session.pin("test")
        for attempt in range(3):
            self.change_user("app", "wrong")
            self.assertEqual(err_of(self.client.received()[0]), (1, 1045, "28000"), attempt)
            self.assertFalse(self.client.closed)
            state = commands.session.state
            self.assertEqual((commands.user, state.schema, state.character_set_client, state.variables,
                              commands.session.pin_reason), ("app", "app", "utf8mb4", (), None))
        self.change_user("app", "secret")
        self.assertEqual(err_of(self.client.received()[0]), (1, 1047, "08S01"))
        self.assertEqual(commands.user, "app")
        self.client.send(b"\x0e")  # COM_PING, answered here
        [ok] = self.client.received()
        self.assertEqual(ok.payload[0], 0)

    def test_plugin_switch(self) -> None:
        """A plugin pyproxy cannot check gets an AuthSwitchRequest on the connection's nonce."""
        self.change_user("app", "secret", plugin="dialog")
        [switch] = self.client.received()
        self.assertEqual(switch.seq, 1)
        self.assertEqual(parse_auth_switch_request(switch.payload)[0], auth.NATIVE)
        self.client.send(auth.native_proof(b"secret", self.client.greeting.auth_data), seq=2)
        [ok] = self.client.received()
        self.assertEqual((ok.seq, ok.payload[0]), (3, 0))
