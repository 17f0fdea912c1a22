"""Connection-phase packets: HandshakeV10, HandshakeResponse41, auth switching."""

from __future__ import annotations

import attrs

from pyproxy.wire.buffer import Reader, lenenc_bytes, lenenc_int, u16, u32
from pyproxy.wire.constants import CLIENT


@attrs.frozen
class HandshakeV10:
    """The server's greeting: what it is, what it can do, and the auth nonce."""

    server_version: str
    connection_id: int
    auth_data: bytes
    capabilities: int
    charset: int
    status: int
    auth_plugin: str
    # MariaDB announces its own capabilities in the filler when CLIENT_MYSQL is
    # clear (bits 32-63 of ``capabilities`` when parsed; make_handshake_v10
    # writes ``capabilities >> 32`` there).
    mariadb_capabilities: int = 0


def parse_handshake_v10(payload: bytes) -> HandshakeV10:
    r = Reader(payload)
    version = r.u8()
    if version != 10:
        raise ValueError(f"unsupported handshake protocol version {version}")
    server_version = r.nul_bytes().decode("utf-8", "replace")
    connection_id = r.u32()
    auth1 = r.fixed(8)
    r.u8()
    caps = r.u16()
    charset = r.u8() if r.remaining() else 0
    status = r.u16() if r.remaining() else 0
    caps |= (r.u16() << 16) if r.remaining() else 0
    auth_len = r.u8() if r.remaining() else 0
    filler = r.fixed(10) if r.remaining() >= 10 else b""
    mariadb_caps = (int.from_bytes(filler[6:10], "little")
                    if len(filler) == 10 and not caps & CLIENT.LONG_PASSWORD else 0)
    auth2 = b""
    if caps & CLIENT.SECURE_CONNECTION:
        # Part 2 is max(13, len - 8) bytes, the last of them a NUL terminator.
        auth2 = r.fixed(min(max(13, auth_len - 8), r.remaining()))[:max(12, auth_len - 9)]
    plugin = ""
    if caps & CLIENT.PLUGIN_AUTH and r.remaining():
        plugin = (r.nul_bytes() if b"\x00" in payload[r.pos:] else r.rest()).decode()
    return HandshakeV10(server_version, connection_id, auth1 + auth2, caps | (mariadb_caps << 32),
                        charset, status, plugin, mariadb_caps)


def make_handshake_v10(h: HandshakeV10) -> bytes:
    """The greeting; MariaDB's extended capabilities (bits 32-63 of
    ``capabilities``) go in the filler, which requires CLIENT_MYSQL clear."""
    auth = h.auth_data
    extended = (h.capabilities >> 32) & 0xFFFFFFFF
    if extended and h.capabilities & CLIENT.LONG_PASSWORD:
        raise ValueError("MariaDB extended capabilities need CLIENT_MYSQL clear")
    return b"".join((
        b"\x0a", h.server_version.encode() + b"\x00", u32(h.connection_id),
        auth[:8], b"\x00", u16(h.capabilities & 0xFFFF), bytes((h.charset,)),
        u16(h.status), u16((h.capabilities >> 16) & 0xFFFF), bytes((len(auth) + 1,)),
        b"\x00" * 6, u32(extended), auth[8:] + b"\x00", h.auth_plugin.encode() + b"\x00",
    ))


@attrs.frozen
class HandshakeResponse41:
    """The client's answer to the greeting: who it is and its proof."""

    capabilities: int
    max_packet_size: int
    charset: int
    username: str
    auth_response: bytes
    database: str | None = None
    auth_plugin: str = ""
    attributes: dict[str, str] = attrs.field(factory=dict)


def is_ssl_request(payload: bytes) -> bool:
    """An SSLRequest is a truncated HandshakeResponse41 of exactly 32 bytes."""
    return len(payload) == 32 and bool(int.from_bytes(payload[:4], "little") & CLIENT.SSL)


def make_ssl_request(capabilities: int, max_packet_size: int, charset: int) -> bytes:
    """The client's SSLRequest: the first 32 bytes of a HandshakeResponse41 with
    CLIENT_SSL set; TLS starts right after it, and the full response follows
    inside TLS with the next sequence id.  MariaDB extended capabilities (bits
    32-63) go in the filler's last 4 bytes, as in the response itself."""
    caps = capabilities | CLIENT.SSL
    return (u32(caps & 0xFFFFFFFF) + u32(max_packet_size) + bytes((charset,)) + b"\x00" * 19
            + u32((caps >> 32) & 0xFFFFFFFF))


def parse_handshake_response41(payload: bytes) -> HandshakeResponse41:
    """Raises MalformedPacket (a ValueError) for anything truncated or pre-4.1."""
    r = Reader(payload)
    caps = r.u32()
    if not caps & CLIENT.PROTOCOL_41:
        raise ValueError("client does not speak protocol 4.1")
    max_packet = r.u32()
    charset = r.u8()
    filler = r.fixed(23)
    if not caps & CLIENT.LONG_PASSWORD:
        # CLIENT_MYSQL clear: a MariaDB client's extended capabilities.
        caps |= int.from_bytes(filler[19:23], "little") << 32
    username = r.nul_bytes().decode("utf-8", "replace")
    if caps & CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth = r.lenenc_bytes()
    elif caps & CLIENT.SECURE_CONNECTION:
        auth = r.fixed(r.u8())
    else:
        auth = r.nul_bytes()
    database = None
    if caps & CLIENT.CONNECT_WITH_DB and r.remaining():
        database = r.nul_bytes().decode("utf-8", "replace") or None
    plugin = ""
    if caps & CLIENT.PLUGIN_AUTH and r.remaining():
        plugin = (r.nul_bytes() if b"\x00" in payload[r.pos:] else r.rest()).decode("utf-8", "replace")
    attributes: dict[str, str] = {}
    if caps & CLIENT.CONNECT_ATTRS and r.remaining():
        block = Reader(r.lenenc_bytes())
        while block.remaining():
            key = block.lenenc_bytes().decode("utf-8", "replace")
            attributes[key] = block.lenenc_bytes().decode("utf-8", "replace")
    return HandshakeResponse41(caps, max_packet, charset, username, auth, database, plugin, attributes)


def make_handshake_response41(h: HandshakeResponse41) -> bytes:
    """The client's answer; MariaDB extended capabilities (bits 32-63 of
    ``capabilities``) go in the filler, which requires CLIENT_MYSQL clear."""
    caps = h.capabilities
    extended = (caps >> 32) & 0xFFFFFFFF
    if extended and caps & CLIENT.LONG_PASSWORD:
        raise ValueError("MariaDB extended capabilities need CLIENT_MYSQL clear")
    parts = [u32(caps & 0xFFFFFFFF), u32(h.max_packet_size), bytes((h.charset,)), b"\x00" * 19,
             u32(extended), h.username.encode() + b"\x00"]
    if caps & CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        parts.append(lenenc_bytes(h.auth_response))
    else:
        parts.append(bytes((len(h.auth_response),)) + h.auth_response)
    if caps & CLIENT.CONNECT_WITH_DB:
        parts.append((h.database or "").encode() + b"\x00")
    if caps & CLIENT.PLUGIN_AUTH:
        parts.append(h.auth_plugin.encode() + b"\x00")
    if caps & CLIENT.CONNECT_ATTRS:
        block = b"".join(lenenc_bytes(k.encode()) + lenenc_bytes(v.encode())
                         for k, v in h.attributes.items())
        parts.append(lenenc_int(len(block)) + block)
    return b"".join(parts)


@attrs.frozen
class ChangeUser:
    """COM_CHANGE_USER: a new login on an open connection."""

    username: str
    auth_response: bytes
    database: str | None
    charset: int
    auth_plugin: str
    attributes: dict[str, str] = attrs.field(factory=dict)


def parse_change_user(payload: bytes, client_caps: int) -> ChangeUser:
    r = Reader(payload, 1)
    username = r.nul_bytes().decode("utf-8", "replace")
    if client_caps & CLIENT.SECURE_CONNECTION:
        auth = r.fixed(r.u8())
    else:
        auth = r.nul_bytes()
    database = r.nul_bytes().decode("utf-8", "replace") or None
    charset = r.u16() if r.remaining() >= 2 else 0
    plugin = ""
    if client_caps & CLIENT.PLUGIN_AUTH and r.remaining():
        plugin = (r.nul_bytes() if b"\x00" in payload[r.pos:] else r.rest()).decode("utf-8", "replace")
    attributes: dict[str, str] = {}
    if client_caps & CLIENT.CONNECT_ATTRS and r.remaining():
        block = Reader(r.lenenc_bytes())
        while block.remaining():
            key = block.lenenc_bytes().decode("utf-8", "replace")
            attributes[key] = block.lenenc_bytes().decode("utf-8", "replace")
    return ChangeUser(username, auth, database, charset, plugin, attributes)


def make_change_user(username: str, auth_response: bytes, database: str | None,
                     charset: int, auth_plugin: str,
                     attributes: dict[str, str] | None = None) -> bytes:
    """COM_CHANGE_USER; ``attributes`` (possibly empty) must be given when
    CLIENT_CONNECT_ATTRS was negotiated: MariaDB refuses the packet without them."""
    parts = [b"\x11", username.encode() + b"\x00", bytes((len(auth_response),)), auth_response,
             (database or "").encode() + b"\x00", u16(charset), auth_plugin.encode() + b"\x00"]
    if attributes is not None:
        block = b"".join(lenenc_bytes(k.encode()) + lenenc_bytes(v.encode())
                         for k, v in attributes.items())
        parts.append(lenenc_int(len(block)) + block)
    return b"".join(parts)


def make_auth_switch_request(plugin: str, auth_data: bytes) -> bytes:
    return b"\xfe" + plugin.encode() + b"\x00" + auth_data + b"\x00"


def parse_auth_switch_request(payload: bytes) -> tuple[str, bytes]:
    """The plugin name and its data, as sent: mysql_native_password's 20-byte
    nonce comes with a NUL after it, client_ed25519's 32 bytes without one, so
    each plugin takes the length it needs."""
    r = Reader(payload, 1)
    plugin = r.nul_bytes().decode()
    return plugin, r.rest()


def make_auth_more_data(data: bytes) -> bytes:
    return b"\x01" + data
