"""Properties of the login and command phases under hostile input, checked with hypothesis:
whatever a client sends, in whatever pieces, no exception escapes the protocol, everything
pyproxy writes back frames cleanly, every error is a well-formed ERR with a code a server
would give at that point, and what pyproxy holds for a client that has not logged in stays
bounded.  (tests/test_frontend_fuzz.py drives the same paths from a fixed random seed;
hypothesis shrinks a failure to its smallest case.)"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyproxy import auth
from pyproxy.login import LOGIN_PACKET_LIMIT
from pyproxy.phases import CLOSED, COMMANDS
from pyproxy.wire.constants import COM_STMT_BULK_EXECUTE, COMMAND
from pyproxy.wire.framing import frame
from pyproxy.wire.handshake import HandshakeResponse41, make_handshake_response41
from test_frontend import CLIENT_CAPS, FakeClient, make_proxy
from test_frontend_fuzz import check_output

PROFILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: What a login may be answered with: bad handshake, access denied, packets out of order,
#: a packet too large, and 3159 when TLS is required.
LOGIN_ERRORS = {1043, 1045, 1153, 1156, 3159}


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(len(data), cut) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def login_payload(client: FakeClient, user: str = "app", password: bytes = b"secret",
                  plugin: str = auth.NATIVE) -> bytes:
    proof = auth.native_proof(password, client.greeting.auth_data)
    return make_handshake_response41(HandshakeResponse41(CLIENT_CAPS, 1 << 24, 45, user, proof, None,
                                                         plugin, {"program_name": "props"}))


@PROFILE
@given(st.binary(max_size=2048), st.lists(st.integers(0, 2048), max_size=8))
def test_login_phase_takes_any_bytes(data: bytes, cuts: list[int]) -> None:
    proxy, _ = make_proxy()
    client = FakeClient(proxy)
    client.transport.clear()
    for piece in chunks(data, cuts):
        client.protocol.dataReceived(piece)
    codes = check_output(client)
    assert set(codes) <= LOGIN_ERRORS, codes
    # Before login nothing past one login packet is ever held.
    assert len(client.protocol.framer.take_buffer()) <= LOGIN_PACKET_LIMIT + 4
    if client.protocol.phase != CLOSED:
        assert codes == []
    client.protocol.connectionLost()


@PROFILE
@given(st.integers(0, 40), st.binary(max_size=64), st.sampled_from([0, 1, 2, 3, 255]),
       st.booleans())
def test_login_packets_mutated(position: int, junk: bytes, seq: int, truncate: bool) -> None:
    """A real login with bytes overwritten or cut, and any sequence id: 1043, 1045, 1156
    or a login; never an exception."""
    proxy, _ = make_proxy()
    client = FakeClient(proxy)
    client.transport.clear()
    payload = bytearray(login_payload(client))
    if truncate:
        del payload[position:]
    else:
        payload[position:position + len(junk)] = junk
    client.protocol.dataReceived(frame(bytes(payload), seq))
    codes = check_output(client)
    assert set(codes) <= LOGIN_ERRORS, codes
    client.protocol.connectionLost()


@PROFILE
@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=96)), min_size=1, max_size=6))
def test_command_phase_takes_any_commands(commands: list[tuple[int, bytes]]) -> None:
    """After a good login, any series of commands with any arguments: every answer frames,
    every ERR parses, and the connection either serves on or has closed after an ERR;
    commands that would shut the server down or dump its binlog are refused (1047)."""
    proxy, backends = make_proxy()
    client = FakeClient(proxy)
    client.login()
    for command, argument in commands:
        if client.protocol.phase != COMMANDS:
            break
        client.transport.clear()
        client.send(bytes((command,)) + argument)
        codes = check_output(client)
        if command == COM_STMT_BULK_EXECUTE:
            # MariaDB's answer to a client that did not negotiate bulk operations.
            assert codes == [1295], codes
        elif command in (COMMAND.COM_SHUTDOWN, COMMAND.COM_DEBUG, COMMAND.COM_BINLOG_DUMP) or command > 0x1F:
            assert codes == [1047], (command, codes)
        # A command that waits for a backend connection holds the rest: stop here.
        if backends.waiting:
            break
    client.protocol.connectionLost()
    backends.waiting.clear()
