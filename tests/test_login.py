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
from twisted.internet import defer

from pyproxy.credential_sources import BackendLogin, Credential, Credentials, Verdict
from pyproxy.frontend import COMMANDS, FrontendProtocol
from pyproxy.logs import get_logger
from pyproxy.login import Identity, Login
from pyproxy.wire.commands import make_init_db, make_query
from pyproxy.config import build
from pyproxy.proxy import Proxy, ServerInfo
from pyproxy.wire.constants import (
    CLIENT,
    CLIENT_MYSQL,
    MARIADB_CLIENT_EXTENDED_METADATA,
    MARIADB_CLIENT_STMT_BULK_OPERATIONS,
    SERVER_STATUS_AUTOCOMMIT,
)
from pyproxy.wire.framing import Packet, PacketFramer, frame
from pyproxy.wire.handshake import (
    ChangeUser,
    HandshakeResponse41,
    make_handshake_response41,
    parse_auth_switch_request,
    parse_handshake_response41,
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
        self.accepted: list[tuple[Identity, int]] = []
        self.errors: list[tuple[tuple[int, str], str, int | None]] = []
        self.timed_out = 0
        self.secure = False
        self.backends: list[BackendLogin | None] = []
        self.refusals: list[str] = []

    @property
    def log(self) -> Any:
        return get_logger(user=self.user)

    def login_accepted(self, identity: Identity, seq: int, backend: BackendLogin | None = None) -> None:
        self.accepted.append((identity, seq))
        self.backends.append(backend)

    def fatal(self, error: tuple[int, str], message: str, seq: int | None = None) -> None:
        self.errors.append((error, message, seq))

    def login_timed_out(self) -> None:
        self.timed_out += 1

    def login_refused(self, reason: str) -> None:
        self.refusals.append(reason)

    def sent(self) -> list[Packet]:
        data = self.transport.value()
        self.transport.clear()
        return PacketFramer().feed(data)


class OneUser:
    """A credential source that is not the configuration: it knows one user and its password,
    and answers when the test says (``hold``), as a source that asks a server would."""

    name = "test"

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.asked: list[str] = []
        self.hold = False
        self.held: list[tuple[defer.Deferred[Credential | None], Credential | None]] = []

    def credential(self, user: str) -> defer.Deferred[Credential | None]:
        self.asked.append(user)
        found = Credential(user, self.name, passwords=(self.password,)) if user == self.user else None
        if self.hold:
            d: defer.Deferred[Credential | None] = defer.Deferred()
            self.held.append((d, found))
            return d
        return defer.succeed(found)

    def release(self) -> None:
        for d, found in self.held:
            d.callback(found)
        self.held.clear()

    def refresh(self, user: str) -> defer.Deferred[bool]:
        return defer.succeed(False)


PROOF = auth.native_proof(b"secret", NONCE)


class OneProof:
    """Credentials that know one user and accept exactly one answer: for a login captured
    from a real client, whose proof was made for another nonce."""

    def __init__(self, user: str, proof: bytes) -> None:
        self.user, self.proof = user, proof

    def credential(self, user: str) -> defer.Deferred[Credential | None]:
        return defer.succeed(Credential(user, "test", passwords=("unused",)) if user == self.user else None)

    def verify(self, credential: Credential, plugin: str, nonce: bytes, answer: bytes, *,
               secure: bool) -> defer.Deferred[Verdict]:
        if answer == self.proof:
            return defer.succeed(Verdict(BackendLogin(credential.user, ("unused",))))
        return defer.succeed(Verdict(None, "wrong_password"))


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
        self.source = OneUser("app", "secret")
        self.credentials = Credentials([self.source])
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
        self.login.receive(response(proof=PROOF, database="app", attributes={"_client_name": "libmariadb"}))
        [(identity, seq)] = self.owner.accepted
        self.assertEqual(seq, 2)
        # CONNECT_WITH_DB is not offered here: the schema is read all the same.
        self.assertEqual(identity, Identity("app", CLIENT_CAPS & ~CLIENT.LOCAL_FILES, 33, "app",
                                            {"_client_name": "libmariadb"}, auth.NATIVE, True))
        self.assertEqual(self.owner.user, "app")
        self.assertEqual(self.source.asked, ["app"])
        self.assertEqual(self.owner.backends, [BackendLogin("app", ("secret",))])
        self.assertEqual(self.owner.sent(), [])  # the OK is the owner's to write

    def test_extended_capabilities_negotiated(self) -> None:
        """libmariadb's login (captured) against pyproxy's offer for MariaDB 10.11: bulk
        operations and extended metadata are negotiated, progress reports and cached
        metadata, which pyproxy does not offer, are not."""
        offered = Proxy(build({"users": [{"name": "app", "password": "x"}]}), MemoryReactorClock(),
                        ServerInfo("10.11", parse_handshake_v10(vectors.MARIADB_GREETING_PAYLOAD).capabilities,
                                   45, 2)).capabilities
        self.assertFalse(offered & CLIENT_MYSQL)
        self.assertEqual(offered >> 32, (MARIADB_CLIENT_STMT_BULK_OPERATIONS | MARIADB_CLIENT_EXTENDED_METADATA) >> 32)
        owner = Owner()
        credentials = OneProof("app", parse_handshake_response41(vectors.LIBMARIADB_RESPONSE_PAYLOAD).auth_response)
        Login(owner, credentials, NONCE, offered).receive(
            Packet(1, vectors.LIBMARIADB_RESPONSE_PAYLOAD, frame(vectors.LIBMARIADB_RESPONSE_PAYLOAD, 1), 1))
        [(identity, _)] = owner.accepted
        self.assertEqual(identity.capabilities >> 32,
                         (MARIADB_CLIENT_STMT_BULK_OPERATIONS | MARIADB_CLIENT_EXTENDED_METADATA) >> 32)
        self.assertTrue(identity.libmariadb)

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
        self.login.receive(Packet(3, PROOF, b"", 3))
        [(identity, seq)] = self.owner.accepted
        self.assertEqual((identity.plugin, seq), (auth.NATIVE, 4))

    def test_caching_sha2_fast_auth_success(self) -> None:
        """caching_sha2_password: 'fast auth success' goes out before the owner answers."""
        login = Login(self.owner, self.credentials, NONCE, CLIENT_CAPS)
        login.receive(response(plugin=auth.CACHING_SHA2, proof=auth.caching_sha2_proof(b"secret", NONCE)))
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
        login.change_user(ChangeUser("app", PROOF, "db", 0, auth.NATIVE), 5)
        [(identity, seq)] = self.owner.accepted
        self.assertEqual(identity, Identity("app", CLIENT.PROTOCOL_41, 45, "db", {}, auth.NATIVE))
        self.assertEqual(seq, 5)


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
        # The handshake timeout is gone; only the client's wait_timeout runs (pyproxy.idle).
        self.assertEqual([c.getTime() for c in self.proxy.reactor.getDelayedCalls()], [28800])
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


# -- the credential chain's asynchronous steps, stored hashes, IAM, the throttle -------------

import hashlib  # noqa: E402

from structlog.testing import capture_logs  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from pyproxy.config import UserConfig  # noqa: E402
from pyproxy.credential_sources import CLEAR_TEXT_WITHOUT_TLS, ConfigSource  # noqa: E402
from pyproxy.iam import SIGNATURE_REFUSED, TokenRejected  # noqa: E402
from pyproxy.throttle import LoginThrottle  # noqa: E402

TOKEN = "pyproxy-v1.eyJ1cmwiOiAiaHR0cHM6Ly9zdHMuYW1hem9uYXdzLmNvbS8ifQ"
ROLE_SESSION = "arn:aws:sts::123456789012:assumed-role/app-lambda/fn-1"


class Tokens:
    """A TokenCheck that knows one good token, which may log in as ``lambda``."""

    def maps(self, user: str) -> bool:
        return user == "lambda"

    def verify(self, token: str, user: str) -> defer.Deferred[str]:
        if token == TOKEN and user == "lambda":
            return defer.succeed(ROLE_SESSION)
        return defer.fail(TokenRejected(SIGNATURE_REFUSED, "SignatureDoesNotMatch"))


def owner_at(address: str) -> Owner:
    owner = Owner()
    owner.transport = FakeTransport(peerAddress=IPv4Address("TCP", address, 40000))
    return owner


def clear(text: str) -> bytes:
    return text.encode() + b"\x00"


class AsynchronousLoginTests(SynchronousTestCase):
    """Lookups that answer later: the login waits; a client that leaves is forgotten."""

    def setUp(self) -> None:
        self.owner = Owner()
        self.source = OneUser("app", "secret")
        self.source.hold = True
        self.login = Login(self.owner, Credentials([self.source]), NONCE, CLIENT_CAPS)

    def test_login_waits_for_the_lookup(self) -> None:
        self.login.receive(response(proof=PROOF))
        self.assertEqual((self.owner.accepted, self.owner.errors, self.owner.sent()), ([], [], []))
        self.source.release()
        self.assertEqual(len(self.owner.accepted), 1)

    def test_client_that_left_during_the_lookup(self) -> None:
        """The connection closed (the owner stops the login): the late answer goes nowhere."""
        self.login.receive(response(proof=PROOF))
        self.login.stop()
        self.source.release()
        self.assertEqual((self.owner.accepted, self.owner.errors, self.owner.sent()), ([], [], []))

    def test_client_speaking_during_the_lookup(self) -> None:
        """A packet while the login is being checked is out of order: 1156, and the late answer
        changes nothing."""
        self.login.receive(response(proof=PROOF))
        self.login.receive(Packet(2, b"\x03SELECT 1", b"", 2))
        self.assertEqual([error for error, _, _ in self.owner.errors], [(1156, "08S01")])


class StoredHashLoginTests(SynchronousTestCase):
    """A [[users]] entry with only its password_hash."""

    def setUp(self) -> None:
        self.owner = Owner()
        users = [UserConfig("hashed", password_hash=auth.stored_hash(b"hash pw"))]
        self.login = Login(self.owner, Credentials([ConfigSource(users)]), NONCE, CLIENT_CAPS)

    def test_caching_sha2_client_is_switched_and_the_proof_gives_sha1(self) -> None:
        """A caching_sha2_password client is asked for mysql_native_password; its proof checks
        against the hash, and gives SHA1(password), which answers any server nonce."""
        self.login.receive(response(user="hashed", plugin=auth.CACHING_SHA2,
                                    proof=auth.caching_sha2_proof(b"hash pw", NONCE)))
        [switch] = self.owner.sent()
        self.assertEqual(parse_auth_switch_request(switch.payload), (auth.NATIVE, NONCE + b"\x00"))
        self.login.receive(Packet(3, auth.native_proof(b"hash pw", NONCE), b"", 3))
        [(identity, seq)] = self.owner.accepted
        self.assertEqual((identity.plugin, seq), (auth.NATIVE, 4))
        [backend] = self.owner.backends
        self.assertEqual(backend.native_sha1, hashlib.sha1(b"hash pw").digest())
        self.assertEqual(backend.passwords, ())
        server_nonce = bytes(range(30, 50))
        self.assertEqual(backend.proof(auth.NATIVE, server_nonce), auth.native_proof(b"hash pw", server_nonce))

    def test_wrong_password_against_the_hash(self) -> None:
        with capture_logs() as logs:
            self.login.receive(response(user="hashed", proof=auth.native_proof(b"nope", NONCE)))
        self.assertEqual(self.owner.errors[0][0], (1045, "28000"))
        [failed] = [entry for entry in logs if entry["event"] == "auth_failed"]
        self.assertEqual((failed["reason"], failed["source"]), ("wrong_password", "config"))


class IamLoginTests(SynchronousTestCase):
    """Tokens as mysql_clear_password: only on a secure connection."""

    def login(self, secure: bool, users: list[UserConfig] | None = None) -> tuple[Owner, Login]:
        owner = Owner()
        owner.secure = secure
        credentials = Credentials([ConfigSource(users or [])], iam=Tokens())
        return owner, Login(owner, credentials, NONCE, CLIENT_CAPS)

    def test_token_over_plaintext_is_refused_with_its_reason(self) -> None:
        """Sent unasked over plaintext: 1045, the log says clear_text_without_tls, never the token."""
        owner, login = self.login(secure=False)
        with capture_logs() as logs:
            login.receive(response(user="lambda", plugin=auth.CLEAR, proof=clear(TOKEN)))
        self.assertEqual(owner.errors[0][0], (1045, "28000"))
        [failed] = [entry for entry in logs if entry["event"] == "auth_failed"]
        self.assertEqual(failed["reason"], CLEAR_TEXT_WITHOUT_TLS)
        self.assertEqual(owner.refusals, [CLEAR_TEXT_WITHOUT_TLS])
        self.assertNotIn(TOKEN[12:], repr(logs))

    def test_plaintext_client_is_never_asked_for_its_token(self) -> None:
        """A user only IAM knows, answering mysql_native_password over plaintext: refused at
        once, with no AuthSwitchRequest to mysql_clear_password."""
        owner, login = self.login(secure=False)
        login.receive(response(user="lambda", proof=b"x" * 20))
        self.assertEqual(owner.sent(), [])
        self.assertEqual(owner.errors[0][0], (1045, "28000"))

    def test_token_on_a_secure_connection(self) -> None:
        """Once the owner says the connection is secure (TLS), the client is switched to
        mysql_clear_password and a good token logs in (the backend login is the user's
        password); a bad token is refused with STS's reason."""
        owner, login = self.login(secure=True, users=[UserConfig("lambda", "lambda pw")])
        login.receive(response(user="lambda", plugin=auth.CLEAR, proof=clear(TOKEN)))
        [(identity, _)] = owner.accepted
        self.assertEqual(owner.backends, [BackendLogin("lambda", ("lambda pw",))])
        owner, login = self.login(secure=True)
        login.receive(response(user="lambda", proof=b"x" * 20))
        [switch] = owner.sent()
        self.assertEqual(parse_auth_switch_request(switch.payload)[0], auth.CLEAR)
        with capture_logs() as logs:
            login.receive(Packet(3, clear(TOKEN + "x"), b"", 3))
        self.assertEqual(owner.errors[0][0], (1045, "28000"))
        self.assertEqual([entry["reason"] for entry in logs if entry["event"] == "auth_failed"],
                         [SIGNATURE_REFUSED])


class ThrottledLoginTests(SynchronousTestCase):
    """Answers to an address with too many failures wait, on the throttle's clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = LoginThrottle(self.clock, failure_delay=2.0, max_failures=1, window=60.0,
                                      delay_max=5.0)
        self.credentials = Credentials([OneUser("app", "secret")])

    def attempt(self, address: str, proof: bytes) -> Owner:
        owner = owner_at(address)
        Login(owner, self.credentials, NONCE, CLIENT_CAPS, throttle=self.throttle).receive(response(proof=proof))
        return owner

    def test_answers_wait_after_failures_from_that_address_only(self) -> None:
        first = self.attempt("10.0.0.1", b"x" * 20)
        self.assertEqual(len(first.errors), 1)  # at once
        second = self.attempt("10.0.0.1", b"x" * 20)
        self.assertEqual(second.errors, [])
        self.clock.advance(1.9)
        self.assertEqual(second.errors, [])
        self.clock.advance(0.1)
        self.assertEqual(len(second.errors), 1)
        # A right password from that address waits too (4 s now: two failures past the first).
        good = self.attempt("10.0.0.1", PROOF)
        self.assertEqual(good.accepted, [])
        self.clock.advance(4)
        self.assertEqual(len(good.accepted), 1)
        # Another address is answered at once, right or wrong.
        self.assertEqual(len(self.attempt("10.0.0.2", PROOF).accepted), 1)
        self.assertEqual(len(self.attempt("10.0.0.2", b"x" * 20).errors), 1)

    def test_client_that_leaves_during_the_delay(self) -> None:
        self.attempt("10.0.0.1", b"x" * 20)
        owner = owner_at("10.0.0.1")
        login = Login(owner, self.credentials, NONCE, CLIENT_CAPS, throttle=self.throttle)
        login.receive(response(proof=PROOF))
        login.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual((owner.accepted, owner.errors), ([], []))


class ThrottledPastTheTimeoutTests(SynchronousTestCase):
    """A throttled answer due after handshake_timeout: the timeout closes the connection and
    the login ends with it (found by fuzz/fuzz_login.py: the delayed ERR was written to the
    closing connection; fuzz/regressions/login/throttled-answer-after-timeout)."""

    def client_answered_late(self, password: str) -> FakeClient:
        proxy, _ = make_proxy(auth={"max_failures": 1, "failure_delay": 2.0})
        for _ in range(3):
            proxy.throttle.failed(PEER)
        client = FakeClient(proxy)
        proxy.reactor.advance(4)
        self.assertEqual(client.login(password=password), [])  # the answer waits 2.5 s
        return client

    def test_refusal_due_after_the_timeout_is_never_written(self) -> None:
        client = self.client_answered_late("wrong")
        client.protocol.proxy.reactor.advance(1)
        self.assertTrue(client.closed)
        self.assertEqual(client.protocol.closed_reason, "handshake timeout")
        client.protocol.proxy.reactor.advance(5)
        self.assertEqual(client.raw(), b"")
        self.assertEqual(client.protocol.proxy.reactor.getDelayedCalls(), [])

    def test_acceptance_due_after_the_timeout_logs_no_one_in(self) -> None:
        client = self.client_answered_late("secret")
        client.protocol.proxy.reactor.advance(6)
        self.assertEqual((client.raw(), client.protocol.proxy.logins), (b"", 0))
        self.assertIsNone(client.protocol.session)
        client.protocol.dataReceived(frame(make_query("SELECT 1"), 0))  # still in its socket
        self.assertEqual(client.raw(), b"")


class FrontendLookupTests(SynchronousTestCase):
    """The same through FrontendProtocol: a client that disconnects while its user is looked
    up leaves nothing behind, and the late answer writes nothing."""

    def test_disconnect_during_the_lookup(self) -> None:
        proxy, _ = make_proxy()
        source = OneUser("app", "secret")
        source.hold = True
        proxy.credentials = Credentials([source])
        client = FakeClient(proxy)
        client.login()
        self.assertEqual(client.received(), [])
        client.protocol.connectionLost()
        self.assertEqual(proxy.clients, {})
        source.release()
        self.assertEqual(client.received(), [])
        self.assertEqual(proxy.logins, 0)
        self.assertEqual(proxy.backend_logins, {})


class FrontendSecureFlagTests(SynchronousTestCase):
    """FrontendProtocol.secure, which the login consults for clear-text answers: False on
    every connection until TLS lands; a transport that provides ISSLTransport (what a
    STARTTLS-upgraded Twisted transport does) makes it True, and a token then logs in."""

    def setUp(self) -> None:
        self.proxy, _ = make_proxy(users=[{"name": "lambda", "password": "lambda pw"}])
        self.proxy.credentials = Credentials([ConfigSource(self.proxy.config.users)], iam=Tokens())

    def login_with_token(self, client: FakeClient) -> list[Packet]:
        client.send(make_handshake_response41(HandshakeResponse41(
            CLIENT_CAPS, 1 << 24, 45, "lambda", clear(TOKEN), None, auth.CLEAR)), seq=1)
        return client.received()

    def test_plaintext(self) -> None:
        client = FakeClient(self.proxy)
        self.assertFalse(client.protocol.secure)
        [err] = self.login_with_token(client)
        self.assertEqual(err.payload[:3], b"\xff\x15\x04")  # 1045
        self.assertEqual(dict(self.proxy.auth_failures), {CLEAR_TEXT_WITHOUT_TLS: 1})

    def test_tls_transport(self) -> None:
        from zope.interface import directlyProvides  # noqa: PLC0415

        from twisted.internet.interfaces import ISSLTransport  # noqa: PLC0415

        client = FakeClient(self.proxy)
        directlyProvides(client.transport, ISSLTransport)
        self.assertTrue(client.protocol.secure)
        [ok] = self.login_with_token(client)
        self.assertEqual(ok.payload[0], 0)
        self.assertEqual(self.proxy.login_for("lambda"), BackendLogin("lambda", ("lambda pw",)))
