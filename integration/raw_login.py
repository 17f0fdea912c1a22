"""A login to a server over a raw socket, its proofs made by a function the test gives.

Used to show that a login made from what pyproxy keeps (a stored hash and a client's proof,
a BackendLogin) is one the server accepts, with nothing else going into it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from pyproxy import auth
from pyproxy.wire.constants import CLIENT
from pyproxy.wire.framing import PacketFramer, frame
from pyproxy.wire.handshake import (
    HandshakeResponse41,
    make_handshake_response41,
    parse_auth_switch_request,
    parse_handshake_v10,
)

CAPABILITIES = (CLIENT.LONG_PASSWORD | CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION
                | CLIENT.PLUGIN_AUTH | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA | CLIENT.TRANSACTIONS)


def _read_packet(sock: socket.socket, framer: PacketFramer) -> tuple[int, bytes]:
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        packets = framer.feed(data)
        if packets:
            assert len(packets) == 1
            return packets[0].seq, packets[0].payload


def login(host: str, port: int, user: str, proof: Callable[[str, bytes], bytes],
          plugin: str = auth.NATIVE) -> bytes:
    """Logs in as ``user`` offering ``plugin`` (mysql_native_password by default), answering
    the greeting and any AuthSwitchRequest with ``proof(plugin, nonce)``; returns the server's
    final packet (OK or ERR)."""
    framer = PacketFramer()
    with socket.create_connection((host, port), timeout=10) as sock:
        seq, payload = _read_packet(sock, framer)
        nonce = parse_handshake_v10(payload).auth_data
        sock.sendall(frame(make_handshake_response41(HandshakeResponse41(
            CAPABILITIES, 1 << 24, 45, user, proof(plugin, nonce), None, plugin)), seq + 1))
        seq, payload = _read_packet(sock, framer)
        if payload[:1] == b"\xfe":  # a server whose default plugin is another one switches
            plugin, nonce = parse_auth_switch_request(payload)
            sock.sendall(frame(proof(plugin, nonce), seq + 1))
            seq, payload = _read_packet(sock, framer)
        return payload


def login_with_sha1(host: str, port: int, user: str, sha1_password: bytes) -> bytes:
    """A mysql_native_password login made from SHA1(password) alone."""
    def proof(plugin: str, nonce: bytes) -> bytes:
        assert plugin == auth.NATIVE, plugin
        return auth.native_proof_from_sha1(sha1_password, nonce)
    return login(host, port, user, proof)
