"""A client session over a raw socket that asks for exactly the capabilities a test names.

Drivers choose their capability flags themselves; to compare what the server and pyproxy send
for a given set of flags (MariaDB's extended capabilities, CLIENT_DEPRECATE_EOF or not), a
test logs in with these flags and reads every reply packet by packet, sequence ids included.
"""

from __future__ import annotations

import socket
import time

from pyproxy import auth
from pyproxy.wire.constants import CLIENT
from pyproxy.wire.framing import Packet, PacketFramer, frame
from pyproxy.wire.handshake import (
    HandshakeResponse41,
    HandshakeV10,
    make_handshake_response41,
    parse_auth_switch_request,
    parse_handshake_v10,
)
from pyproxy.wire.response_tracker import DONE, ResponseTracker
from pyproxy.wire.commands import REPLIES, Reply, opens_cursor

#: What every raw session asks for besides the flags a test names.
LOGIN = CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH | CLIENT.CONNECT_WITH_DB


class RawSession:
    """One logged-in connection; ``capabilities`` may hold MariaDB's extended bits (32-63),
    which are sent only with CLIENT_MYSQL clear, as a MariaDB client does."""

    def __init__(self, host: str, port: int, user: str, password: str, database: str,
                 capabilities: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.framer = PacketFramer()
        self._packets: list[Packet] = []
        greeting = self.read()
        self.greeting: HandshakeV10 = parse_handshake_v10(greeting.payload)
        caps = capabilities | LOGIN
        self.capabilities = caps
        self.sock.sendall(frame(make_handshake_response41(HandshakeResponse41(
            caps, 1 << 24, 45, user, auth.proof_for(auth.NATIVE, password.encode(), self.greeting.auth_data),
            database, auth.NATIVE)), greeting.seq + 1))
        answer = self.read()
        if answer.payload[:1] == b"\xfe":
            plugin, nonce = parse_auth_switch_request(answer.payload)
            self.sock.sendall(frame(auth.proof_for(plugin, password.encode(), nonce), answer.seq + 1))
            answer = self.read()
        if answer.payload[:1] != b"\x00":
            raise ConnectionError(f"login refused: {answer.payload!r}")

    def read(self) -> Packet:
        while not self._packets:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed")
            self._packets.extend(self.framer.feed(data))
        return self._packets.pop(0)

    def command(self, payload: bytes) -> list[tuple[int, bytes]]:
        """Sends one command and returns its whole reply as (sequence id, payload) pairs; the
        end is found by pyproxy's own tracker, checked by waiting briefly for anything more."""
        self.sock.sendall(frame(payload, 0))
        reply = REPLIES[payload[0]]
        tracker = ResponseTracker(bool(self.capabilities & CLIENT.DEPRECATE_EOF))
        tracker.start(reply, cursor=reply == Reply.EXECUTE and opens_cursor(payload))
        out = []
        while tracker.state != DONE:
            packet = self.read()
            out.append((packet.seq, packet.payload))
            tracker.scan(frame(packet.payload, packet.seq))
        self.sock.settimeout(0.2)
        try:
            extra = self.sock.recv(65536)
        except (TimeoutError, socket.timeout):
            extra = b""
        finally:
            self.sock.settimeout(10)
        if extra or self._packets:
            raise AssertionError(f"bytes after the end of the reply: {extra!r}")
        return out

    def send_only(self, payload: bytes) -> None:
        """A command without a reply (COM_STMT_CLOSE)."""
        self.sock.sendall(frame(payload, 0))
        time.sleep(0.05)

    def close(self) -> None:
        try:
            self.sock.sendall(frame(b"\x01", 0))
        finally:
            self.sock.close()
