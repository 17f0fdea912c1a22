"""pyproxy.login: the login phase, alone with a fake owner, and as every listener runs it.

LoginAloneTests drive a Login with an owner that only records what it is
told, over a StringTransport, so the exchange is checked without a session
or a pool.  HandshakeTests log in through FrontendProtocol, as a client of
the pooled listener does.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

import vectors
from pyproxy import auth
from pyproxy.credentials import Checked
from pyproxy.frontend import COMMANDS, FrontendProtocol
from pyproxy.logs import get_logger
from pyproxy.login import Identity, Login
from pyproxy.wire.commands import make_init_db
from pyproxy.wire.constants import CLIENT, SERVER_STATUS_AUTOCOMMIT
from pyproxy.wire.framing import Packet, PacketFramer, frame
from pyproxy.wire.handshake import (
    ChangeUser,
    HandshakeResponse41,
    make_handshake_response41,
    parse_auth_switch_request,
    parse_handshake_v10,
)
from pyproxy.wire.responses import parse_err, parse_ok
from test_backend import FakeTransport
from test_frontend import CLIENT_CAPS, PEER, SERVER, FakeClient, err_of, make_proxy

NONCE = bytes(range(1, 21))


class Owner:
    """The connection side of a Login: records what the login tells it."""

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.user = ""
        self.secure = False
        self.tls_started = 0
        self.accepted: list[tuple[Identity, int]] = []
        self.errors: list[tuple[tuple[int, str], str, int | None]] = []
        self.timed_out = 0

    @property
    def log(self) -> Any:
        return get_logger(user=self.user)

    def login_accepted(self, identity: Identity, seq: int) -> None:
        self.accepted.append((identity, seq))

    def fatal(self, error: tuple[int, str], message: str, seq: int | None = None) -> None:
        self.errors.append((error, message, seq))

    def login_timed_out(self) -> None:
        self.timed_out += 1

    def start_tls(self) -> None:
        self.tls_started += 1
        self.secure = True

    def sent(self) -> list[Packet]:
        data = self.transport.value()
        self.transport.clear()
        return PacketFramer().feed(data)


class OneProof:
    """A credential source that is not the configuration: it knows one user, with one proof."""

    def __init__(self, user: str, proof: bytes) -> None:
        self.user, self.proof = user, proof
        self.asked: list[tuple[str, str, bytes, bytes]] = []

    def check(self, user: str, plugin: str, nonce: bytes, proof: bytes) -> Checked:
        self.asked.append((user, plugin, nonce, proof))
        if user != self.user:
            return Checked.UNKNOWN_USER
        return Checked.ACCEPTED if proof == self.proof else Checked.REFUSED


def response(user: str = "app", proof: bytes = b"p" * 20, plugin: str = auth.NATIVE, caps: int = CLIENT_CAPS,
             database: str | None = None, attributes: dict[str, str] | None = None) -> Packet:
    if database:
        caps |= CLIENT.CONNECT_WITH_DB
    payload = make_handshake_response41(HandshakeResponse41(caps, 1 << 24, 33, user, proof, database, plugin,
                                                            attributes or {}))
    return Packet(1, payload, frame(payload, 1), 1)


class LoginAloneTests(SynchronousTestCase):
    """A Login with a fake owner and a credential source of the test's own."""

    def setUp(self) -> None:
        self.owner = Owner()
        self.credentials = OneProof("app", b"p" * 20)
        self.login = Login(self.owner, self.credentials, NONCE, CLIENT_CAPS & ~CLIENT.LOCAL_FILES)

    def test_greeting_and_timeout(self) -> None:
        """greet() sends the HandshakeV10 with the nonce, what is offered and the plugin
        announced, and tells the owner when the timeout passes; stop() disarms it."""
        clock = MemoryReactorClock()
        self.login.greet(7, SERVER, auth.CACHING_SHA2, clock, 5)
        [greeting] = self.owner.sent()
        hello = parse_handshake_v10(greeting.payload)
        self.assertEqual((hello.connection_id, hello.auth_data, hello.capabilities, hello.auth_plugin),
                         (7, NONCE, CLIENT_CAPS & ~CLIENT.LOCAL_FILES, auth.CACHING_SHA2))
        clock.advance(5)
        self.assertEqual(self.owner.timed_out, 1)
        other = Login(self.owner, self.credentials, NONCE, 0)
        other.greet(8, SERVER, auth.NATIVE, clock, 5)
        other.stop()
        clock.advance(5)
        self.assertEqual(self.owner.timed_out, 1)

    def test_identity_handed_over(self) -> None:
        """A proof the credential source accepts ends in one Identity: the user, the
        capabilities both sides have, the character set, schema, attributes, plugin."""
        waits = self.login.receive(response(database="app", attributes={"_client_name": "libmariadb"}))
        self.assertFalse(waits)
        [(identity, seq)] = self.owner.accepted
        self.assertEqual(seq, 2)
        # CONNECT_WITH_DB is not offered here: the schema is read all the same.
        self.assertEqual(identity, Identity("app", CLIENT_CAPS & ~CLIENT.LOCAL_FILES, 33, "app",
                                            {"_client_name": "libmariadb"}, auth.NATIVE, True))
        self.assertEqual(self.owner.user, "app")
        self.assertEqual(self.credentials.asked, [("app", auth.NATIVE, NONCE, b"p" * 20)])
        self.assertEqual(self.owner.sent(), [])  # the OK is the owner's to write

    def test_refused_proof(self) -> None:
        """A proof the source refuses, or a user it does not know: 1045 at the next
        sequence id, naming the user and the peer."""
        for user in ("app", "ghost"):
            owner = Owner()
            Login(owner, self.credentials, NONCE, CLIENT_CAPS).receive(response(user=user, proof=b"x" * 20))
            self.assertEqual(owner.errors, [((1045, "28000"), f"Access denied for user '{user}'@'{PEER}' "
                                                              "(using password: YES)", 2)])
            self.assertEqual(owner.user, user)

    def test_auth_switch(self) -> None:
        """A plugin pyproxy cannot check gets an AuthSwitchRequest to native, on the same
        nonce; the reply is the proof."""
        self.assertTrue(self.login.receive(response(plugin="dialog", proof=b"")))
        [switch] = self.owner.sent()
        self.assertEqual(switch.seq, 2)
        self.assertEqual(parse_auth_switch_request(switch.payload), (auth.NATIVE, NONCE + b"\x00"))
        self.assertFalse(self.login.receive(Packet(3, b"p" * 20, b"", 3)))
        [(identity, seq)] = self.owner.accepted
        self.assertEqual((identity.plugin, seq), (auth.NATIVE, 4))

    def test_caching_sha2_fast_auth_success(self) -> None:
        """caching_sha2_password: 'fast auth success' goes out before the owner answers."""
        login = Login(self.owner, OneProof("app", b"s" * 32), NONCE, CLIENT_CAPS)
        login.receive(response(plugin=auth.CACHING_SHA2, proof=b"s" * 32))
        [more] = self.owner.sent()
        self.assertEqual((more.seq, more.payload), (2, b"\x01\x03"))
        self.assertEqual(self.owner.accepted[0][1], 3)

    def test_ssl_request_and_garbage(self) -> None:
        """No TLS yet: an SSLRequest gets 1043; so does a response that does not parse."""
        ssl = (CLIENT_CAPS | CLIENT.SSL).to_bytes(4, "little") + b"\x00\x00\x00\x01\x2d" + b"\x00" * 23
        self.login.receive(Packet(1, ssl, b"", 1))
        self.login.receive(Packet(1, b"garbage", b"", 1))
        self.assertEqual(self.owner.errors, [((1043, "08S01"), "Bad handshake: TLS is not offered here", 2),
                                             ((1043, "08S01"), "Bad handshake", 2)])

    def test_change_user(self) -> None:
        """COM_CHANGE_USER runs the same check, with the connection's capabilities and
        the request's character set (45 when it gives none) and schema."""
        self.owner.user = "before"
        login = Login(self.owner, self.credentials, NONCE, CLIENT.PROTOCOL_41)
        self.assertFalse(login.change_user(ChangeUser("app", b"p" * 20, "db", 0, auth.NATIVE), 5))
        [(identity, seq)] = self.owner.accepted
        self.assertEqual(identity, Identity("app", CLIENT.PROTOCOL_41, 45, "db", {}, auth.NATIVE))
        self.assertEqual(seq, 5)


class NeedsPassword:
    """A credential source that holds only what checks a password itself (a stored hash):
    a scramble cannot be checked; the password ``secret`` can."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, bytes]] = []

    def check(self, user: str, plugin: str, nonce: bytes, proof: bytes) -> Checked:
        self.asked.append((plugin, proof))
        if plugin == auth.CLEAR:
            return Checked.ACCEPTED if proof == b"secret" else Checked.REFUSED
        return Checked.NEEDS_PASSWORD if plugin == auth.CACHING_SHA2 else Checked.REFUSED


SSL_REQUEST = (CLIENT_CAPS | CLIENT.SSL).to_bytes(4, "little") + b"\x00\x00\x00\x01\x2d" + b"\x00" * 23


class TlsLoginTests(SynchronousTestCase):
    """The login over TLS, and what needs TLS: [tls] require, caching_sha2_password's full
    authentication (clear over TLS, RSA without), mysql_clear_password."""

    def setUp(self) -> None:
        self.owner = Owner()

    def login(self, credentials: Any = None, require: bool = False, rsa: Any = None) -> Login:
        return Login(self.owner, credentials or OneProof("app", b"p" * 20), NONCE, CLIENT_CAPS | CLIENT.SSL,
                     require_tls=require, rsa=rsa)

    def test_ssl_request_starts_tls_and_the_identity_says_so(self) -> None:
        """An SSLRequest makes the owner start TLS; the response that follows (sequence id
        2) logs in, and the Identity is secure."""
        login = self.login(require=True)
        self.assertFalse(login.receive(Packet(1, SSL_REQUEST, b"", 1)))
        self.assertEqual((self.owner.tls_started, self.owner.errors), (1, []))
        second = response()
        login.receive(Packet(2, second.payload, b"", 2))
        [(identity, seq)] = self.owner.accepted
        self.assertTrue(identity.secure)
        self.assertEqual(seq, 3)
        # A second SSLRequest on a connection already running TLS is a bad handshake.
        self.login().receive(Packet(3, SSL_REQUEST, b"", 3))
        self.assertEqual(self.owner.errors[0][0], (1043, "08S01"))

    def test_plaintext_identity_is_not_secure(self) -> None:
        self.login().receive(response())
        self.assertFalse(self.owner.accepted[0][0].secure)

    def test_require_refuses_plaintext_with_3159(self) -> None:
        self.login(require=True).receive(response())
        self.assertEqual(self.owner.errors, [((3159, "HY000"), "Connections using insecure transport are "
                                                               "prohibited while --require_secure_transport=ON.",
                                              2)])
        self.assertEqual(self.owner.accepted, [])

    def test_full_authentication_over_tls(self) -> None:
        """A scramble the credentials cannot check: perform-full-auth (0x04), then the
        password and a NUL, over TLS; the Identity carries the proved password."""
        self.owner.secure = True
        login = self.login(NeedsPassword())
        self.assertTrue(login.receive(response(plugin=auth.CACHING_SHA2, proof=b"s" * 32)))
        [more] = self.owner.sent()
        self.assertEqual((more.seq, more.payload), (2, b"\x01\x04"))
        self.assertFalse(login.receive(Packet(3, b"secret\x00", b"", 3)))
        [(identity, seq)] = self.owner.accepted
        self.assertEqual((identity.password, identity.secure, identity.plugin, seq),
                         ("secret", True, auth.CACHING_SHA2, 4))
        self.assertNotIn("secret", repr(identity))

    def test_full_authentication_with_rsa(self) -> None:
        """Without TLS the client asks for the public key (0x02), gets it as AuthMoreData,
        and sends the password encrypted with it; a wrong one is refused with 1045."""
        from pymysql import _auth as pymysql_auth

        from pyproxy.tls import RsaKeys

        keys = RsaKeys(1024)
        for password, accepted in ((b"secret", True), (b"wrong", False)):
            self.owner = Owner()
            login = self.login(NeedsPassword(), rsa=lambda: keys)
            self.assertTrue(login.receive(response(plugin=auth.CACHING_SHA2, proof=b"s" * 32)))
            self.assertEqual(self.owner.sent()[0].payload, b"\x01\x04")
            self.assertTrue(login.receive(Packet(3, b"\x02", b"", 3)))
            [key] = self.owner.sent()
            self.assertEqual((key.seq, key.payload), (4, b"\x01" + keys.public_pem))
            encrypted = pymysql_auth.sha2_rsa_encrypt(password, NONCE, keys.public_pem)
            self.assertFalse(login.receive(Packet(5, encrypted, b"", 5)))
            if accepted:
                self.assertEqual(self.owner.accepted[0][0].password, "secret")
                self.assertEqual(self.owner.accepted[0][1], 6)
            else:
                self.assertEqual(self.owner.errors[0][0], (1045, "28000"))

    def test_full_authentication_without_keys_or_tls(self) -> None:
        login = self.login(NeedsPassword())
        login.receive(response(plugin=auth.CACHING_SHA2, proof=b"s" * 32))
        login.receive(Packet(3, b"\x02", b"", 3))
        self.assertEqual(self.owner.errors[0][0], (1045, "28000"))

    def test_clear_password_over_tls_only(self) -> None:
        """mysql_clear_password is checked as sent over TLS; without TLS the client is asked
        for a mysql_native_password proof instead, and the clear text is not checked."""
        credentials = NeedsPassword()
        self.owner.secure = True
        self.login(credentials).receive(response(plugin=auth.CLEAR, proof=b"secret\x00"))
        self.assertEqual(self.owner.accepted[0][0].plugin, auth.CLEAR)
        self.assertEqual(credentials.asked, [(auth.CLEAR, b"secret")])

        self.owner = Owner()
        plain = NeedsPassword()
        self.assertTrue(self.login(plain).receive(response(plugin=auth.CLEAR, proof=b"secret\x00")))
        [switch] = self.owner.sent()
        self.assertEqual(parse_auth_switch_request(switch.payload)[0], auth.NATIVE)
        self.assertEqual(plain.asked, [])


class HandshakeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proxy, self.backends = make_proxy()
        self.client = FakeClient(self.proxy)

    def test_greeting(self) -> None:
        """The greeting shows the server's version, pyproxy's capabilities and a fresh nonce."""
        g = self.client.greeting
        self.assertEqual(g.server_version, vectors.SERVER_VERSION)
        self.assertEqual(g.capabilities, self.proxy.capabilities)
        self.assertTrue(g.capabilities & CLIENT.SESSION_TRACK and g.capabilities & CLIENT.DEPRECATE_EOF)
        self.assertFalse(g.capabilities & CLIENT.SSL)
        self.assertEqual(g.auth_plugin, auth.NATIVE)
        self.assertEqual(len(g.auth_data), 20)
        self.assertEqual(g.connection_id, self.client.protocol.id)
        self.assertTrue(self.client.transport.nodelay)
        self.assertEqual([c.getTime() for c in self.proxy.reactor.getDelayedCalls()], [5])

    def test_login(self) -> None:
        """A correct proof gets an OK (seq 2), and no backend connection is taken for an idle client."""
        [ok] = self.client.login()
        self.assertEqual(ok.seq, 2)
        self.assertEqual(parse_ok(ok.payload, True).status, SERVER_STATUS_AUTOCOMMIT)
        self.assertEqual(self.client.protocol.phase, COMMANDS)
        self.assertFalse(self.client.closed)
        self.assertEqual(self.proxy.reactor.getDelayedCalls(), [])
        self.assertEqual(self.backends.waiting, [])
        self.assertIs(self.proxy.clients[self.client.protocol.id], self.client.protocol)

    def test_login_byte_by_byte(self) -> None:
        """The login response may arrive one byte per read."""
        proof = auth.native_proof(b"secret", self.client.greeting.auth_data)
        data = frame(make_handshake_response41(HandshakeResponse41(
            CLIENT_CAPS, 0, 45, "app", proof, None, auth.NATIVE)), 1)
        for i in range(len(data)):
            self.client.protocol.dataReceived(data[i:i + 1])
        [ok] = self.client.received()
        self.assertEqual(ok.payload[0], 0)

    def test_wrong_password(self) -> None:
        """A wrong proof gets ERR 1045 (28000), seq 2, and the connection is closed."""
        [err] = self.client.login(password="wrong")
        self.assertEqual(err_of(err), (2, 1045, "28000"))
        self.assertEqual(parse_err(err.payload).message,
                         f"Access denied for user 'app'@'{PEER}' (using password: YES)")
        self.assertTrue(self.client.closed)

    def test_unknown_user(self) -> None:
        """An account pyproxy does not know is refused the same way, without saying it is unknown."""
        [err] = self.client.login(user="ghost")
        self.assertEqual(err_of(err), (2, 1045, "28000"))
        self.assertTrue(self.client.closed)

    def test_empty_password_account(self) -> None:
        """An account without password logs in with an empty proof; a password for it is refused."""
        [ok] = self.client.login(user="nopw", password="")
        self.assertEqual(ok.payload[0], 0)
        other = FakeClient(self.proxy)
        [err] = other.login(user="nopw", password="x")
        self.assertEqual(err_of(err)[1], 1045)

    def test_empty_handshake_packet(self) -> None:
        """An empty packet instead of a login gets exactly what MariaDB answers: 1043 Bad handshake."""
        self.client.send(b"", seq=1)
        self.assertEqual(self.client.raw(), vectors.BAD_HANDSHAKE_ERR)
        self.assertTrue(self.client.closed)

    def test_garbage_handshake(self) -> None:
        """Bytes that are not a HandshakeResponse41 get 1043 and a closed connection."""
        self.client.send(b"\xff\xff\xff\xffgarbage", seq=1)
        [err] = self.client.received()
        self.assertEqual(err_of(err), (2, 1043, "08S01"))
        self.assertTrue(self.client.closed)

    def test_pre_41_client(self) -> None:
        """A client without CLIENT_PROTOCOL_41 gets 1043."""
        [err] = self.client.login(caps=CLIENT_CAPS & ~CLIENT.PROTOCOL_41)
        self.assertEqual(err_of(err)[1:], (1043, "08S01"))

    def test_ssl_request(self) -> None:
        """pyproxy offers no TLS: an SSLRequest gets 1043 and the connection closes."""
        caps = CLIENT_CAPS | CLIENT.SSL
        self.client.send(caps.to_bytes(4, "little") + b"\x00\x00\x00\x01\x2d" + b"\x00" * 23, seq=1)
        [err] = self.client.received()
        self.assertEqual(err_of(err), (2, 1043, "08S01"))
        self.assertTrue(self.client.closed)

    def test_handshake_timeout(self) -> None:
        """A client that does not log in within handshake_timeout is disconnected."""
        self.proxy.reactor.advance(4.9)
        self.assertFalse(self.client.closed)
        self.proxy.reactor.advance(0.1)
        self.assertTrue(self.client.closed)

    def test_auth_switch_for_unknown_plugin(self) -> None:
        """A client answering with a plugin pyproxy cannot check is switched to native, same nonce."""
        [switch] = self._login_with_plugin("dialog")
        self.assertEqual(switch.seq, 2)
        self.assertEqual(parse_auth_switch_request(switch.payload),
                         (auth.NATIVE, self.client.greeting.auth_data + b"\x00"))
        self.client.send(auth.native_proof(b"secret", self.client.greeting.auth_data), seq=3)
        [ok] = self.client.received()
        self.assertEqual((ok.seq, ok.payload[0]), (4, 0))

    def _login_with_plugin(self, plugin: str) -> list[Packet]:
        self.client.send(make_handshake_response41(HandshakeResponse41(
            CLIENT_CAPS, 0, 45, "app", b"\x01" * 20, None, plugin)), seq=1)
        return self.client.received()

    def test_caching_sha2_fast_auth(self) -> None:
        """A caching_sha2_password proof gets 'fast auth success' (seq 2), then the OK (seq 3)."""
        more, ok = self.client.login(plugin=auth.CACHING_SHA2)
        self.assertEqual((more.seq, more.payload), (2, b"\x01\x03"))
        self.assertEqual((ok.seq, ok.payload[0]), (3, 0))

    def test_login_with_unknown_schema_checks_it(self) -> None:
        """A login naming a schema borrows a backend to select it; the server's error ends the login."""
        self.client.login(database="nope")
        conn, server = self.backends.open()
        [init_db] = server.received()
        self.assertEqual(init_db.payload, make_init_db("nope"))
        server.send(frame(b"\xff\x19\x04#42000Unknown database 'nope'", 1))
        [err] = self.client.received()
        self.assertEqual(err_of(err), (2, 1049, "42000"))
        self.assertTrue(self.client.closed)

    def test_login_with_schema(self) -> None:
        """A schema that exists is selected, then the OK; the next login with it needs no check."""
        self.client.login(database="app")
        conn, server = self.backends.open()
        [init_db] = server.received()
        self.assertEqual(init_db.payload, make_init_db("app"))
        server.send(vectors.INIT_DB_OK)
        [ok] = self.client.received()
        self.assertEqual((ok.seq, ok.payload[0]), (2, 0))
        self.assertEqual(self.proxy.pool("app").idle, [conn])
        self.assertIn("app", self.proxy.known_schemas)
        second = FakeClient(self.proxy)
        [ok] = second.login(database="app")
        self.assertEqual(ok.payload[0], 0)

    def test_unix_socket_transport(self) -> None:
        """A transport without TCP options (a UNIX socket) still gets a greeting."""
        class UnixTransport(FakeTransport):
            def setTcpNoDelay(self, enabled: bool) -> None:
                raise OSError(95, "Operation not supported")

        protocol = FrontendProtocol(self.proxy)
        transport = UnixTransport()
        protocol.makeConnection(transport)
        self.assertEqual(transport.value()[3:5], b"\x00\x0a")
