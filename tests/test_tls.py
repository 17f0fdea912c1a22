"""pyproxy.tls: loading the certificate shown to clients, the servers' CA, and the RSA pair of
caching_sha2_password; the [tls] keys of the configuration; the login's full authentication
for a user known only by its hash."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import attrs
import pytest
from pymysql import _auth as pymysql_auth
from twisted.internet.testing import MemoryReactorClock

import vectors
from pyproxy import auth, config
from pyproxy.backend import BackendConnection, BackendError, Target
from pyproxy.tls import BackendTLS, BackendTLSCache, RsaKeys, ServerTLS, TLSConfigError, close_client
from pyproxy.wire.constants import CLIENT
from pyproxy.wire.framing import PacketFramer, frame
from pyproxy.wire.handshake import make_handshake_v10, parse_handshake_response41, parse_handshake_v10
from test_backend import FakeServer
from test_frontend import FakeClient, make_proxy

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def ca() -> object:
    return trustme.CA()


def pair(ca: object, directory: Path, name: str = "server") -> tuple[Path, Path]:
    issued = ca.issue_cert("127.0.0.1", "localhost")  # type: ignore[attr-defined]
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    return cert, key


def test_server_tls_loads_a_pair(ca: object, tmp_path: Path) -> None:
    cert, key = pair(ca, tmp_path)
    loaded = ServerTLS.load(str(cert), str(key))
    assert loaded.options.getContext() is not None
    assert loaded.subject and loaded.not_after


@pytest.mark.parametrize("problem", ["missing cert", "not pem", "bad key", "mismatched key"])
def test_server_tls_names_what_is_wrong(ca: object, tmp_path: Path, problem: str) -> None:
    """Each bad pair is one TLSConfigError naming the file; a key's content never shows."""
    cert, key = pair(ca, tmp_path)
    if problem == "missing cert":
        cert = tmp_path / "nowhere.pem"
        expected = "cannot read [tls] cert"
    elif problem == "not pem":
        cert.write_text("hello")
        expected = "holds no PEM certificate"
    elif problem == "bad key":
        key.write_text("-----BEGIN PRIVATE KEY-----\nsecretstuff\n-----END PRIVATE KEY-----\n")
        expected = "is not a PEM private key"
    else:
        _, key = pair(ca, tmp_path, "other")
        expected = "does not match"
    with pytest.raises(TLSConfigError) as info:
        ServerTLS.load(str(cert), str(key))
    assert expected in str(info.value)
    assert "secretstuff" not in str(info.value)


def test_backend_tls_cache(ca: object, tmp_path: Path) -> None:
    """Off gives None; verify gives one BackendTLS per server name, server_name winning
    over the host; a CA file that cannot be read is reported at once."""
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))  # type: ignore[attr-defined]
    assert BackendTLSCache("off", "", "").for_host("db") is None
    cache = BackendTLSCache("verify", str(ca_path), "")
    first = cache.for_host("db-1.internal")
    assert first is cache.for_host("db-1.internal")
    assert first.server_name == "db-1.internal"
    assert BackendTLSCache("verify", str(ca_path), "rds.example").for_host("10.0.0.1").server_name == "rds.example"
    with pytest.raises(TLSConfigError, match="cannot read"):
        BackendTLSCache("verify", str(tmp_path / "missing.pem"), "")


def test_rsa_keys_decrypt_what_pymysql_sends() -> None:
    keys = RsaKeys(1024)
    nonce = bytes(range(1, 21))
    assert keys.decrypt_password(pymysql_auth.sha2_rsa_encrypt(b"pa55-word", nonce, keys.public_pem),
                                 nonce) == b"pa55-word"
    assert keys.decrypt_password(b"\x00" * 128, nonce) is None


def test_close_client_without_tls() -> None:
    closed = []
    close_client(SimpleNamespace(loseConnection=lambda: closed.append(True)))
    assert closed == [True]


def test_tls_config_keys() -> None:
    """[tls] cert and key go together; require needs them; [backend] tls is off or verify."""
    built = config.build({"tls": {"cert": "/c.pem", "key": "/k.pem", "require": True},
                          "backend": {"tls": "verify", "ca": "/ca.pem", "server_name": "db"}})
    assert (built.tls.require, built.backend.tls, built.backend.server_name) == (True, "verify", "db")
    problems: list[str] = []
    config.build({"tls": {"cert": "/c.pem"}}, problems)
    assert problems == ["tls.cert and tls.key: both are needed to offer TLS"]
    problems = []
    config.build({"tls": {"require": True}}, problems)
    assert problems == ["tls.require: requiring TLS needs tls.cert and tls.key"]
    problems = []
    config.build({"backend": {"tls": "on"}}, problems)
    assert problems and problems[0].startswith("backend.tls: must be one of off, verify")
    # A key's path is not a secret: log lines may name it.
    assert "/k.pem" not in config.secrets(built)


def _hash_only_login(secure: bool, rsa: object = None, announced: str = auth.NATIVE) -> tuple[object, object]:
    """A Login for a user known only by its stored hash, whose client answers with a
    caching_sha2_password scramble (which the hash cannot check)."""
    from twisted.internet import defer

    from pyproxy.credential_sources import ConfigSource, Credentials
    from pyproxy.login import Login
    from test_login import Owner, response

    owner = Owner()
    owner.secure = secure  # type: ignore[attr-defined]
    source = ConfigSource([config.UserConfig("h", password_hash=auth.stored_hash(b"hunter2-pw"))])
    login = Login(owner, Credentials([source]), b"n" * 20, vectors_caps(), rsa=rsa)
    login.announced = announced
    login.receive(response(user="h", proof=b"s" * 32, plugin=auth.CACHING_SHA2))
    del defer
    return owner, login


def vectors_caps() -> int:
    from test_login import CLIENT_CAPS

    return CLIENT_CAPS


def test_a_hash_only_user_gives_its_password_over_tls() -> None:
    """Over TLS pyproxy asks for the password itself (perform full authentication, 0x04),
    checks it against the hash, and the password then logs in that user's connections."""
    from pyproxy.wire.framing import Packet

    owner, login = _hash_only_login(secure=True)
    [asked] = owner.sent()  # type: ignore[attr-defined]
    assert asked.payload == b"\x01" + auth.SHA2_PERFORM_FULL_AUTH
    login.receive(Packet(3, b"hunter2-pw\x00", frame(b"hunter2-pw\x00", 3), 3))  # type: ignore[attr-defined]
    [(identity, seq)] = owner.accepted  # type: ignore[attr-defined]
    assert identity.user == "h" and seq == 4
    assert owner.backends[-1].passwords == ("hunter2-pw",)  # type: ignore[attr-defined]


def test_a_hash_only_user_without_tls_uses_rsa_when_caching_sha2_was_announced() -> None:
    from pyproxy.wire.framing import Packet

    keys = RsaKeys()
    owner, login = _hash_only_login(secure=False, rsa=lambda: keys, announced=auth.CACHING_SHA2)
    login.receive(Packet(3, auth.SHA2_REQUEST_PUBLIC_KEY, frame(auth.SHA2_REQUEST_PUBLIC_KEY, 3), 3))  # type: ignore[attr-defined]
    _, pem = owner.sent()  # type: ignore[attr-defined]
    assert b"PUBLIC KEY" in pem.payload
    secret = pymysql_auth.sha2_rsa_encrypt(b"wrong-pw", b"n" * 20, keys.public_pem)
    login.receive(Packet(5, secret, frame(secret, 5), 5))  # type: ignore[attr-defined]
    assert owner.errors and owner.errors[0][0][0] == 1045  # type: ignore[attr-defined]
    # Announcing mysql_native_password, the same client is switched to it instead.
    owner, _ = _hash_only_login(secure=False, rsa=lambda: keys, announced=auth.NATIVE)
    [switch] = owner.sent()  # type: ignore[attr-defined]
    assert switch.payload[:1] == b"\xfe" and b"mysql_native_password" in switch.payload


# --- the SSLRequest on both sides, over fake transports --------------------------------------


class TLSFakeTransport:
    """Records startTLS; what arrives after it goes to ``protocol`` (Twisted's TLS layer)."""

    def __init__(self, base: object) -> None:
        self.base = base
        self.started: list[object] = []
        self.layer: list[bytes] = []

    def start(self, options: object) -> None:
        self.started.append(options)
        self.base.protocol = SimpleNamespace(dataReceived=self.layer.append)  # type: ignore[attr-defined]


def test_frontend_hands_bytes_after_the_ssl_request_to_tls(ca: object, tmp_path: Path) -> None:
    """A client sends its TLS ClientHello right behind its SSLRequest, in the same read: the
    36 bytes start TLS, the rest goes to the TLS layer, never to the packet framer (which
    would take a TLS record header for a 66 kB packet)."""
    cert, key = pair(ca, tmp_path)
    proxy, _ = make_proxy(tls={"cert": str(cert), "key": str(key), "require": True})
    client = FakeClient(proxy)
    assert client.greeting.capabilities & CLIENT.SSL
    fake = TLSFakeTransport(client.transport)
    client.transport.startTLS = fake.start  # type: ignore[attr-defined]
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"r" * 40
    request = (CLIENT.PROTOCOL_41 | CLIENT.SSL | CLIENT.SECURE_CONNECTION).to_bytes(4, "little") \
        + (1 << 24).to_bytes(4, "little") + b"\x2d" + b"\x00" * 23
    data = frame(request, 1) + hello
    client.protocol.dataReceived(data[:20])  # a short first read: held until whole
    assert fake.started == []
    client.protocol.dataReceived(data[20:])
    assert fake.started == [proxy.tls.options]
    assert fake.layer == [hello]
    assert client.protocol.secure
    assert client.raw() == b""  # no error written


def test_backend_sends_ssl_request_then_starts_tls() -> None:
    """[backend] tls: after the greeting, an SSLRequest (sequence id 1, CLIENT_SSL set), TLS
    as a client with the target's options, then the login response with sequence id 2; a
    server whose greeting offers no TLS is refused with 2026, nothing sent in plaintext."""
    options = object()
    target = Target("db.test", 3306, vectors.USER, vectors.PASSWORD, tls=BackendTLS("db.test", options))
    greeting = parse_handshake_v10(vectors.GREETING[4:])
    with_tls = frame(make_handshake_v10(attrs.evolve(greeting, capabilities=greeting.capabilities | CLIENT.SSL)), 0)
    conn = BackendConnection(target, 0, MemoryReactorClock())
    server = FakeServer(conn)
    started: list[object] = []
    server.transport.startTLS = started.append  # type: ignore[attr-defined]
    server.send(with_tls)
    ssl_request, response = PacketFramer().feed(server.transport.value())
    assert (ssl_request.seq, len(ssl_request.payload)) == (1, 32)
    assert int.from_bytes(ssl_request.payload[:4], "little") & CLIENT.SSL
    assert started == [options]
    assert response.seq == 2 and parse_handshake_response41(response.payload).username == vectors.USER

    plain = BackendConnection(target, 0, MemoryReactorClock())
    server = FakeServer(plain)
    server.transport.startTLS = started.append  # type: ignore[attr-defined]
    failures: list[object] = []
    plain.ready.addErrback(failures.append)
    server.send(frame(make_handshake_v10(attrs.evolve(greeting, capabilities=greeting.capabilities & ~CLIENT.SSL)), 0))
    assert server.transport.value() == b""
    error = failures[0].value  # type: ignore[attr-defined]
    assert isinstance(error, BackendError) and error.code == 2026 and "offers no TLS" in error.message


