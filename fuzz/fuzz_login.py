"""Coverage-guided fuzzing of the client-facing login phase (pyproxy.login) with atheris.

Each input is one client connection to a FrontendProtocol over a fake transport, on a fake
clock: pyproxy greets, then the client's bytes arrive in the pieces the input cuts them
into, with the clock moved on between pieces.  Everything a client can reach before and
around its login is there: the handshake response, the SSLRequest (a stand-in TLS layer
takes over, so clear-text answers count as secure), the AuthSwitchRequest to a plugin the
user's secret can check, caching_sha2_password's fast path and its full authentication
(over TLS, or with pyproxy's RSA key), IAM tokens (a real TokenVerifier whose STS is a
stub), the throttle's delayed answers, and after a login, commands and COM_CHANGE_USER,
which runs the login again.  The users are of every kind: a password, an empty one, only a
stored hash, only an IAM role, a password and a role.

The contract checked is what a real reactor needs from a connection:

- no exception escapes (into the reactor), nothing is logged as an unhandled error (Twisted's
  log, a Deferred that failed unseen) and nothing at level error by pyproxy's own logs;
- every input ends with the connection waiting for more bytes, closed cleanly (COM_QUIT, the
  handshake timeout, the client gone), or closed right after one well-formed ERR packet with
  a code a server gives during a login;
- what pyproxy writes frames cleanly, and nothing is written once the connection is closing
  or gone;
- what it holds for the client stays bounded (the framer's buffer before and after login,
  the queue of commands sent ahead, which stops reading the client when full).

Input layout (so that the seed corpus is easy to write): byte 0 picks the configuration
(bits 0-3, see _variant) and whether TLS is offered (bit 4; always when it is required),
byte 1 the failures the throttle already holds for the client's address (0-7), then
records of ``size (2 bytes, little-endian), clock step (1 byte, 1/20 s), bytes``.

    python3 fuzz/fuzz_login.py -max_total_time=600 fuzz/corpus-login   # as long as you like
    python3 fuzz/fuzz_login.py -runs=100000                            # a number of inputs
    python3 fuzz/fuzz_login.py crash-<hash>                            # replay one input

``--seed-corpus DIR`` writes valid logins of each kind into DIR first.
integration/test_fuzz_codec.py runs it for a bounded time in CI and replays
fuzz/regressions/login.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import attrs  # noqa: E402
import structlog  # noqa: E402
import structlog.testing  # noqa: E402
from twisted.internet import defer  # noqa: E402
from twisted.internet.testing import MemoryReactorClock, StringTransport  # noqa: E402
from twisted.logger import globalLogPublisher  # noqa: E402

from fuzz.cli import run  # noqa: E402

with atheris.instrument_imports(include=["pyproxy"]):
    from pyproxy import auth
    from pyproxy.aws import synchronously
    from pyproxy.config import IamRoleConfig, build
    from pyproxy.flow import QUEUE_LIMIT
    from pyproxy.frontend import FrontendProtocol
    from pyproxy.iam import RdsTokens, TokenVerifier, encode_token
    from pyproxy.login import LOGIN_PACKET_LIMIT
    from pyproxy.phases import AUTH_SWITCH, CLOSED, COMMANDS, HANDSHAKE
    from pyproxy.proxy import Proxy, ServerInfo
    from pyproxy.tls import RsaKeys
    from pyproxy.wire.constants import CLIENT, COMMAND
    from pyproxy.wire.framing import PacketFramer, frame
    from pyproxy.wire.handshake import (
        HandshakeResponse41,
        make_change_user,
        make_handshake_response41,
        make_ssl_request,
    )
    from pyproxy.wire.responses import parse_err

#: Every connection's nonce: a fixed one, so that an input (and the seed corpus) can hold a
#: valid proof.  pyproxy's own is random; nothing here depends on its value.
NONCE = bytes(range(65, 85))

PASSWORD = "fuzz-app-pw"
HASHED_PASSWORD = "fuzz-hash-pw"
USERS = [{"name": "app", "password": PASSWORD}, {"name": "nopw", "password": ""},
         {"name": "hashed", "password_hash": auth.stored_hash(HASHED_PASSWORD.encode())}]
ROLE = "arn:aws:iam::123456789012:role/fuzz-fn"
#: The IAM role logs in as ``lambda`` (known from nothing else) and as ``app``.
ROLES = [IamRoleConfig(ROLE, "lambda"), IamRoleConfig(ROLE, "app")]
STS = "https://sts.fuzz.test"
SERVER = ServerInfo("10.11.19-MariaDB", 0xFFFFFFFF | (0x1F << 32), 45, 2)
HANDSHAKE_TIMEOUT = 5.0
MAX_PACKET = 4096

#: What a login may be answered with: bad handshake, access denied, packets out of order, a
#: packet too large, 3159 when TLS is required.
LOGIN_ERRORS = {1043, 1045, 1153, 1156, 3159}


def _variant(bits: int) -> Any:
    """Configuration ``bits``: 1 announces caching_sha2_password, 2 requires TLS, 4 makes
    the backend logins RDS IAM ones, 8 delays every answer after one failure.  (TLS itself is
    the harness's stand-in, set on the Proxy: the configuration names no certificate.)"""
    config = build({
        "proxy": {"max_packet_size": MAX_PACKET, "handshake_timeout": HANDSHAKE_TIMEOUT,
                  "auth_plugin": auth.CACHING_SHA2 if bits & 1 else auth.NATIVE},
        "backend": {"iam": bool(bits & 4), "connect_timeout": 1},
        "pool": {"max_connections": 2, "borrow_timeout": 1},
        "auth": {"max_failures": 1 if bits & 8 else 5, "failure_delay": 0.5},
        "users": USERS,
    })
    return attrs.evolve(config, tls=attrs.evolve(config.tls, require=True)) if bits & 2 else config


VARIANTS = [_variant(bits) for bits in range(16)]
RSA = RsaKeys(1024)  # made once: a key per input would cost more than the rest


class FakeTLS:
    """What [tls] would hold: the options startTLS takes (the fake transport ignores them)."""

    options = None


class Crash(AssertionError):
    """The contract broken: libFuzzer reports it with the input."""


class ClientTransport(StringTransport):
    """The client's socket: records what pyproxy writes, notes a write after the close, and
    plays a TLS layer that starts at once and passes bytes through unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = False
        self.late_writes = 0
        self.tls_started = False

    def write(self, data: bytes) -> None:
        if self.disconnecting or self.lost:
            self.late_writes += 1
        super().write(data)

    def startTLS(self, options: Any) -> None:  # noqa: N802 - Twisted's name
        if self.tls_started:
            raise Crash("TLS started twice on one connection")
        self.tls_started = True

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802 - Twisted's name
        pass


def sts_answer(url: str, headers: dict[str, str]) -> Any:
    """The stub STS: the signed ``x-fuzz-arn`` header names the caller (the role's session
    when absent); ``x-fuzz-status`` is the HTTP status."""
    status = headers.get("x-fuzz-status", "200")
    arn = headers.get("x-fuzz-arn", "arn:aws:sts::123456789012:assumed-role/fuzz-fn/s1")
    arn = arn.replace("&", "&amp;").replace("<", "&lt;")
    body = (f"<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>{arn}</Arn>"
            f"</GetCallerIdentityResult></GetCallerIdentityResponse>").encode()
    return defer.succeed((int(status) if status.isdigit() and len(status) < 4 else 500, body))


class FakeRds:
    """boto3's RDS client, signing nothing."""

    def generate_db_auth_token(self, DBHostname: str, Port: int, DBUsername: str,  # noqa: N803
                               Region: str | None = None) -> str:
        return f"{DBHostname}:{Port}/?Action=connect&DBUser={DBUsername}&X-Amz-Signature=fuzz"


# -- what went wrong, as the reactor would see it ------------------------------

_errors: list[str] = []


def _twisted_event(event: dict[str, Any]) -> None:
    """Twisted's log: an unhandled error (a Deferred garbage-collected with a failure, an
    exception a reactor caught)."""
    if event.get("log_failure") is not None or event.get("isError"):
        failure = event.get("log_failure")
        _errors.append(f"twisted: {failure.getTraceback() if failure is not None else event}")


# -- one connection ---------------------------------------------------------------

def records(data: bytes) -> list[tuple[float, bytes]]:
    """(clock step in seconds, bytes) pieces of the input after its first two bytes."""
    pieces = []
    pos = 2
    while pos + 3 <= len(data):
        size = data[pos] | data[pos + 1] << 8
        step = data[pos + 2] / 20
        pieces.append((step, data[pos + 3:pos + 3 + size]))
        pos += 3 + size
    return pieces


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    _errors.clear()
    globalLogPublisher.addObserver(_twisted_event)
    try:
        with structlog.testing.capture_logs() as logs:
            connection(data)
            gc.collect()  # a Deferred that failed unseen says so when it is collected
    finally:
        globalLogPublisher.removeObserver(_twisted_event)
    _errors.extend(f"pyproxy logged {event}" for event in logs
                   if event.get("log_level") in ("error", "critical", "exception"))
    if _errors:
        raise Crash("\n".join(_errors))


def connection(data: bytes) -> None:
    """One client connection, fed ``data``, then gone; raises Crash when it broke the contract."""
    reactor = MemoryReactorClock()
    proxy = Proxy(VARIANTS[data[0] & 15], reactor, SERVER)
    proxy._rsa = RSA
    if data[0] & 16 or data[0] & 2:
        proxy.tls = FakeTLS()  # type: ignore[assignment]
    proxy.credentials.iam = TokenVerifier(ROLES, sts_answer, reactor, endpoints=[STS])
    # [backend] iam: boto3 would sign in the reactor's thread pool, which a fake reactor has not.
    writer = proxy.topology.writer.config
    proxy.authentication._rds_tokens[(writer.host, writer.port)] = RdsTokens(
        FakeRds, writer.host, writer.port, synchronously, reactor)
    transport = ClientTransport()
    random_nonce, auth.new_nonce = auth.new_nonce, lambda: NONCE
    try:
        client = FrontendProtocol(proxy)
    finally:
        auth.new_nonce = random_nonce
    for _ in range(data[1] & 7):
        proxy.throttle.failed(transport.getPeer().host)
    transport.protocol = client  # where the TLS layer hands what follows an SSLRequest
    client.makeConnection(transport)
    for step, piece in records(data):
        if step:
            reactor.advance(step)
        if transport.disconnecting or transport.producerState != "producing":
            break  # closed, or not read until the client's replies drain (never, here)
        client.dataReceived(piece)
        check_bounds(client, len(piece))
    # Delayed answers come in time, well within the handshake timeout.
    reactor.advance(HANDSHAKE_TIMEOUT / 2)
    check_bounds(client, 0)
    # The proof was accepted (its session began, even if the schema it named then failed).
    check_output(client, transport, client.session is not None)
    transport.lost = True
    client.connectionLost()
    reactor.advance(3600)  # whatever is still scheduled runs, and writes nothing
    if transport.late_writes:
        raise Crash(f"{transport.late_writes} writes after the connection closed")
    if proxy.clients:
        raise Crash(f"clients left behind: {list(proxy.clients)}")


def check_bounds(client: FrontendProtocol, read: int) -> None:
    """What pyproxy holds for the client: one login packet before login; after it, one
    packet of max_packet_size, the commands sent ahead up to QUEUE_LIMIT, and the bytes of
    the ``read`` that brought more (a reactor reads at most 64 KiB at a time)."""
    held = client.framer.buffered()
    limit = (MAX_PACKET + read if client.phase == COMMANDS else LOGIN_PACKET_LIMIT) + 4
    if held > limit:
        raise Crash(f"the framer holds {held} bytes in phase {client.phase}")
    queue = client.commands.queue
    if queue is not None and len(queue) > QUEUE_LIMIT:
        raise Crash(f"{len(queue)} commands queued")


def check_output(client: FrontendProtocol, transport: ClientTransport, logged_in: bool) -> None:
    """Everything written frames; the first packet is the greeting; every ERR parses; a
    client that never logged in is waiting (no ERR), or closed after one login ERR or by the
    handshake timeout."""
    framer = PacketFramer()
    packets = framer.feed(transport.value())
    if framer.take_buffer():
        raise Crash("pyproxy wrote a partial packet")
    if not packets or packets[0].seq != 0 or packets[0].payload[:1] != b"\x0a":
        raise Crash("no greeting first")
    errors = []
    for packet in packets[1:]:
        if packet.payload[:1] == b"\xff":
            err = parse_err(packet.payload)
            if len(err.sqlstate) != 5 or not err.sqlstate.isalnum():
                raise Crash(f"ERR with SQLSTATE {err.sqlstate!r}")
            errors.append(err.code)
    if client.phase == CLOSED and not transport.disconnecting:
        raise Crash("closed but the transport left open")
    if logged_in:
        return
    if client.phase not in (HANDSHAKE, AUTH_SWITCH, CLOSED):
        raise Crash(f"phase {client.phase} without a login")
    if not transport.disconnecting:
        if errors:
            raise Crash(f"ERR {errors} sent and the connection left open")
        return
    if client.closed_reason == "handshake timeout":
        if errors:
            raise Crash(f"ERR {errors} before the timeout closed the connection")
        return
    if len(errors) != 1 or packets[-1].payload[:1] != b"\xff" or errors[0] not in LOGIN_ERRORS:
        raise Crash(f"a login closed with ERRs {errors} (last packet {packets[-1].payload[:1]!r})")


# -- the seed corpus ------------------------------------------------------------------

CAPS = (CLIENT.LONG_PASSWORD | CLIENT.LONG_FLAG | CLIENT.PROTOCOL_41 | CLIENT.TRANSACTIONS
        | CLIENT.SECURE_CONNECTION | CLIENT.MULTI_STATEMENTS | CLIENT.MULTI_RESULTS
        | CLIENT.PS_MULTI_RESULTS | CLIENT.PLUGIN_AUTH | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CLIENT.CONNECT_ATTRS | CLIENT.SESSION_TRACK | CLIENT.DEPRECATE_EOF)


def record(payload: bytes, seq: int, step: int = 0) -> bytes:
    packet = frame(payload, seq)
    return len(packet).to_bytes(2, "little") + bytes((step,)) + packet


def login(user: str, answer: bytes, plugin: str = auth.NATIVE, caps: int = CAPS,
          database: str | None = None) -> bytes:
    if database:
        caps |= CLIENT.CONNECT_WITH_DB
    return make_handshake_response41(HandshakeResponse41(caps, 1 << 24, 45, user, answer, database,
                                                         plugin, {"_client_name": "fuzz"}))


def iam_token(**headers: str) -> bytes:
    """A token the stub STS answers, signed at the fake clock's start (1970)."""
    query = ("Action=GetCallerIdentity&Version=2011-06-15&X-Amz-Algorithm=AWS4-HMAC-SHA256"
             "&X-Amz-Credential=AKIAFUZZ%2F19700101%2Fus-east-1%2Fsts%2Faws4_request"
             "&X-Amz-Date=19700101T000000Z&X-Amz-Expires=900"
             f"&X-Amz-SignedHeaders={'%3B'.join(['host', 'x-pyproxy-audience', *headers])}"
             "&X-Amz-Signature=" + "0" * 64)
    return encode_token(f"{STS}/?{query}", {"x-pyproxy-audience": "pyproxy", **headers}).encode() + b"\x00"


def seeds() -> dict[str, bytes]:
    """Valid logins of each kind (and a few refused ones), so the fuzzer starts from inputs
    that reach every step of the exchange."""
    native = auth.native_proof(PASSWORD.encode(), NONCE)
    sha2 = auth.caching_sha2_proof(PASSWORD.encode(), NONCE)
    hashed = auth.native_proof(HASHED_PASSWORD.encode(), NONCE)
    ssl = make_ssl_request(CAPS | CLIENT.SSL, 1 << 24, 45)
    change = make_change_user("nopw", b"", None, 45, auth.NATIVE, {})
    change_hashed = make_change_user("hashed", hashed, "app", 45, auth.NATIVE, {})
    return {
        "native": b"\x00\x00" + record(login("app", native), 1),
        "native_pieces": b"\x00\x00" + b"".join(
            len(part).to_bytes(2, "little") + b"\x01" + part
            for whole in [frame(login("app", native), 1)] for part in (whole[:3], whole[3:40], whole[40:])),
        "empty_password": b"\x00\x00" + record(login("nopw", b""), 1),
        "wrong_password": b"\x00\x00" + record(login("app", bytes(20)), 1),
        "unknown_user": b"\x00\x00" + record(login("nobody", native), 1),
        "schema": b"\x00\x00" + record(login("app", native, database="app"), 1),
        "hashed_native": b"\x00\x00" + record(login("hashed", hashed), 1),
        "switch_to_native": b"\x00\x00" + record(login("hashed", sha2, auth.CACHING_SHA2), 1)
                            + record(hashed, 3),
        "sha2_fast": b"\x01\x00" + record(login("app", sha2, auth.CACHING_SHA2), 1),
        "sha2_full_rsa": b"\x01\x00" + record(login("hashed", sha2, auth.CACHING_SHA2), 1)
                         + record(auth.SHA2_REQUEST_PUBLIC_KEY, 3) + record(bytes(128), 5),
        "sha2_full_tls": b"\x11\x00" + record(ssl, 1) + record(login("hashed", sha2, auth.CACHING_SHA2,
                                                                     CAPS | CLIENT.SSL), 2)
                         + record(HASHED_PASSWORD.encode() + b"\x00", 4),
        "clear_tls": b"\x10\x00" + record(ssl, 1) + record(
            login("app", PASSWORD.encode() + b"\x00", auth.CLEAR, CAPS | CLIENT.SSL), 2),
        "clear_plaintext": b"\x00\x00" + record(login("app", PASSWORD.encode() + b"\x00", auth.CLEAR), 1),
        "iam_token": b"\x14\x00" + record(ssl, 1) + record(
            login("lambda", iam_token(), auth.CLEAR, CAPS | CLIENT.SSL), 2),
        "iam_switch": b"\x10\x00" + record(ssl, 1) + record(login("app", native, auth.NATIVE,
                                                                  CAPS | CLIENT.SSL), 2)
                      + record(iam_token(**{"x-fuzz-status": "403"}), 4),
        "tls_required": b"\x02\x00" + record(login("app", native), 1),
        "throttled": b"\x08\x07" + record(login("app", bytes(20)), 1, 10),
        "change_user": b"\x00\x00" + record(login("app", native), 1) + record(change, 0)
                       + record(change_hashed, 0) + record(bytes((COMMAND.COM_PING,)), 0),
        "quit": b"\x00\x00" + record(login("app", native), 1) + record(bytes((COMMAND.COM_QUIT,)), 0),
        "timeout": b"\x00\x00" + record(login("app", native)[:30], 1, 255) + record(b"", 0, 255),
    }


if __name__ == "__main__":
    run(sys.argv, test_one_input, seeds)
