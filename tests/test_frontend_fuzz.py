"""Bad input at the client side: random and mutated packets never escape as exceptions.

Each case drives a fresh FrontendProtocol over a fake transport; whatever it
sends back must be well-formed packets, and any error must be a proper ERR.
The cases come from a fixed seed so a failure can be replayed.
"""

from __future__ import annotations

import random

import pytest

from pyproxy import auth
from pyproxy.wire.constants import COM_STMT_BULK_EXECUTE, COMMAND
from pyproxy.wire.framing import PacketFramer, frame
from pyproxy.wire.handshake import HandshakeResponse41, make_handshake_response41
from pyproxy.wire.responses import parse_err
from test_frontend import CLIENT_CAPS, FakeClient, make_proxy

SEED = 20261127
CASES = 3000


def check_output(client: FakeClient) -> list[int]:
    """Everything sent must frame cleanly; every ERR must parse.  Returns ERR codes."""
    packets = PacketFramer().feed(client.transport.value())
    codes = []
    for packet in packets:
        if packet.payload[:1] == b"\xff":
            codes.append(parse_err(packet.payload).code)
    return codes


def valid_login(client: FakeClient) -> bytes:
    proof = auth.native_proof(b"secret", client.greeting.auth_data)
    return make_handshake_response41(HandshakeResponse41(
        CLIENT_CAPS, 1 << 24, 45, "app", proof, None, auth.NATIVE, {"program_name": "fuzz"}))


def test_random_handshake_payloads() -> None:
    """Random, truncated and bit-flipped login packets get 1043/1045 or wait for more; never a crash."""
    rng = random.Random(SEED)
    proxy, _ = make_proxy()
    for case in range(CASES):
        client = FakeClient(proxy)
        client.transport.clear()
        login = valid_login(client)
        kind = case % 3
        if kind == 0:
            payload = rng.randbytes(rng.randrange(0, 300))
        elif kind == 1:
            payload = login[:rng.randrange(0, len(login))]
        else:
            mutated = bytearray(login)
            for _ in range(rng.randrange(1, 6)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            payload = bytes(mutated)
        client.protocol.dataReceived(frame(payload, 1))
        codes = check_output(client)
        assert set(codes) <= {1043, 1045}, (case, payload.hex(), codes)
        client.protocol.connectionLost()


def test_random_streams() -> None:
    """Arbitrary bytes, including impossible lengths and sequence ids, in random chunks."""
    rng = random.Random(SEED + 1)
    proxy, _ = make_proxy()
    for case in range(CASES):
        client = FakeClient(proxy)
        client.transport.clear()
        data = rng.randbytes(rng.randrange(0, 600))
        pos = 0
        while pos < len(data):
            step = rng.randrange(1, 64)
            client.protocol.dataReceived(data[pos:pos + step])
            pos += step
        check_output(client)
        client.protocol.connectionLost()


@pytest.mark.parametrize("command", range(256))
def test_every_command_byte_with_junk(command: int) -> None:
    """Every command byte with random arguments after login: an answer or a wait for a
    backend, never an exception, and unknown commands get 1047."""
    rng = random.Random(SEED + command)
    proxy, backends = make_proxy()
    for _ in range(10):
        client = FakeClient(proxy)
        client.login()
        client.transport.clear()
        client.send(bytes((command,)) + rng.randbytes(rng.randrange(0, 40)))
        codes = check_output(client)
        if command == COM_STMT_BULK_EXECUTE:
            # MariaDB's answer to a client that did not negotiate bulk operations.
            assert codes == [1295]
        elif command in (COMMAND.COM_SHUTDOWN, COMMAND.COM_DEBUG, COMMAND.COM_BINLOG_DUMP) or command > 0x1F:
            assert codes == [1047]
        client.protocol.connectionLost()
    backends.waiting.clear()
