"""pyproxy.wire.handshake: greeting, HandshakeResponse41, COM_CHANGE_USER and auth switching."""

from __future__ import annotations

import attrs
import pytest

import vectors
from pyproxy import auth
from pyproxy.wire.buffer import MalformedPacket
from pyproxy.wire.constants import (
    CLIENT,
    CLIENT_MYSQL,
    MARIADB_CLIENT_CACHE_METADATA,
    MARIADB_CLIENT_EXTENDED_METADATA,
    MARIADB_CLIENT_PROGRESS,
    MARIADB_CLIENT_STMT_BULK_OPERATIONS,
    SERVER_STATUS_AUTOCOMMIT,
)
from pyproxy.wire.handshake import (
    HandshakeResponse41,
    HandshakeV10,
    is_ssl_request,
    make_auth_more_data,
    make_auth_switch_request,
    make_change_user,
    make_handshake_response41,
    make_handshake_v10,
    make_ssl_request,
    parse_auth_switch_request,
    parse_change_user,
    parse_handshake_response41,
    parse_handshake_v10,
)

GREETING_PAYLOAD = vectors.GREETING[4:]
NONCE = b"6@}w[E&+F^&BZ|%=D{aR"
CAPS = (CLIENT.LONG_PASSWORD | CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH
        | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA | CLIENT.CONNECT_ATTRS | CLIENT.CONNECT_WITH_DB
        | CLIENT.SESSION_TRACK | CLIENT.DEPRECATE_EOF)


def test_parse_captured_greeting() -> None:
    """The real MariaDB greeting yields its version, id, 20-byte nonce, plugin and MariaDB caps."""
    assert vectors.GREETING[3] == 0
    h = parse_handshake_v10(GREETING_PAYLOAD)
    assert h.server_version == vectors.SERVER_VERSION
    assert h.connection_id == 6
    assert h.auth_data == NONCE
    assert h.auth_plugin == auth.NATIVE
    assert h.charset == 45
    assert h.status == SERVER_STATUS_AUTOCOMMIT
    assert h.capabilities & CLIENT.PROTOCOL_41
    assert h.capabilities & CLIENT.SESSION_TRACK
    assert h.capabilities & CLIENT.DEPRECATE_EOF
    # MariaDB clears CLIENT_MYSQL and puts its extended capabilities in the filler.
    assert not h.capabilities & CLIENT.LONG_PASSWORD
    assert h.mariadb_capabilities == 29


def test_greeting_round_trip() -> None:
    """make_handshake_v10 writes what parse_handshake_v10 reads back (filler zeroed)."""
    h = HandshakeV10("8.0.36-pyproxy", 0x01020304, auth.new_nonce(), CAPS, 255, 2, auth.CACHING_SHA2)
    assert parse_handshake_v10(make_handshake_v10(h)) == h


def test_rebuilt_greeting_matches_capture_but_filler() -> None:
    """Re-encoding the captured greeting changes only the MariaDB capability filler."""
    h = parse_handshake_v10(GREETING_PAYLOAD)
    rebuilt = make_handshake_v10(h)
    assert len(rebuilt) == len(GREETING_PAYLOAD)
    filler_at = GREETING_PAYLOAD.index(b"\x00", 1) + 1 + 4 + 8 + 1 + 2 + 1 + 2 + 2 + 1
    assert rebuilt[:filler_at] == GREETING_PAYLOAD[:filler_at]
    assert rebuilt[filler_at + 10:] == GREETING_PAYLOAD[filler_at + 10:]


def test_new_nonce_is_printable() -> None:
    """Nonces are 20 printable, NUL-free bytes, like a server's."""
    nonce = auth.new_nonce()
    assert len(nonce) == 20
    assert all(33 <= b < 127 for b in nonce)


def test_greeting_with_wrong_protocol_version() -> None:
    """A protocol-9 greeting is refused with ValueError."""
    with pytest.raises(ValueError):
        parse_handshake_v10(b"\x09" + GREETING_PAYLOAD[1:])


def test_truncated_greeting_is_malformed() -> None:
    """A greeting cut inside the nonce raises MalformedPacket."""
    with pytest.raises(MalformedPacket):
        parse_handshake_v10(GREETING_PAYLOAD[:40])


def test_handshake_response_round_trip() -> None:
    """Every field of a HandshakeResponse41 survives make then parse."""
    h = HandshakeResponse41(CAPS, 1 << 24, 45, "app", auth.native_proof(b"secret", NONCE), "app",
                            auth.NATIVE, {"_client_name": "libmariadb", "program_name": "mariadb"})
    assert parse_handshake_response41(make_handshake_response41(h)) == h


def test_handshake_response_without_lenenc_auth() -> None:
    """Without PLUGIN_AUTH_LENENC_CLIENT_DATA the proof is prefixed by one length byte."""
    caps = CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH
    proof = auth.native_proof(b"pw", NONCE)
    payload = make_handshake_response41(HandshakeResponse41(caps, 0, 33, "u", proof, None, auth.NATIVE))
    assert payload[32:34] == b"u\x00"
    assert payload[34] == 20
    parsed = parse_handshake_response41(payload)
    assert (parsed.username, parsed.auth_response, parsed.database, parsed.auth_plugin) == (
        "u", proof, None, auth.NATIVE)


def test_handshake_response_as_a_client_sends_it() -> None:
    """A response laid out by hand (as the capture script sent it) parses field by field."""
    caps = CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH | CLIENT.CONNECT_WITH_DB
    proof = bytes(range(20))
    payload = (caps.to_bytes(4, "little") + (1 << 24).to_bytes(4, "little") + b"\x2d" + b"\x00" * 23
               + b"app\x00" + b"\x14" + proof + b"\x00" + b"mysql_native_password\x00")
    parsed = parse_handshake_response41(payload)
    assert parsed.username == "app"
    assert parsed.auth_response == proof
    assert parsed.database is None  # an empty schema name means none
    assert parsed.auth_plugin == auth.NATIVE
    assert parsed.max_packet_size == 1 << 24


def test_pre_41_response_refused() -> None:
    """A client without CLIENT_PROTOCOL_41 gets ValueError (the frontend answers 1043)."""
    payload = make_handshake_response41(HandshakeResponse41(CAPS, 0, 45, "app", b"x" * 20))
    with pytest.raises(ValueError):
        parse_handshake_response41(b"\x00\x00\x00\x00" + payload[4:])


@pytest.mark.parametrize("cut", [0, 3, 8, 31, 33, 36])
def test_truncated_response_is_malformed(cut: int) -> None:
    """A response cut before its proof ends raises MalformedPacket."""
    payload = make_handshake_response41(HandshakeResponse41(CAPS, 0, 45, "app", b"x" * 20, "db"))
    with pytest.raises(ValueError):
        parse_handshake_response41(payload[:cut])


def test_ssl_request_detection() -> None:
    """A 32-byte response with CLIENT_SSL is an SSLRequest; a full response is not."""
    caps = CLIENT.PROTOCOL_41 | CLIENT.SSL
    ssl = caps.to_bytes(4, "little") + b"\x00\x00\x00\x01" + b"\x2d" + b"\x00" * 23
    assert is_ssl_request(ssl)
    assert not is_ssl_request((CLIENT.PROTOCOL_41).to_bytes(4, "little") + ssl[4:])
    full = make_handshake_response41(HandshakeResponse41(CAPS | CLIENT.SSL, 0, 45, "app", b""))
    assert not is_ssl_request(full)


def test_ssl_request_bytes() -> None:
    """pyproxy's SSLRequest to a server: the 32 bytes PyMySQL sends, CLIENT_SSL added."""
    payload = make_ssl_request(CLIENT.PROTOCOL_41 | CLIENT.SECURE_CONNECTION, 1 << 30, 45)
    assert payload == bytes.fromhex("008a0000" "00000040" "2d") + b"\x00" * 23
    assert is_ssl_request(payload)


def test_change_user_round_trip() -> None:
    """COM_CHANGE_USER as pyproxy writes it parses back to the same login."""
    proof = auth.native_proof(b"secret", NONCE)
    payload = make_change_user("app", proof, "app", 45, auth.NATIVE)
    assert payload[0] == 0x11
    request = parse_change_user(payload, CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH)
    assert (request.username, request.auth_response, request.database, request.charset,
            request.auth_plugin) == ("app", proof, "app", 45, auth.NATIVE)


def test_change_user_without_schema() -> None:
    """An empty schema in COM_CHANGE_USER means none (how pyproxy unselects one)."""
    payload = make_change_user("app", b"", None, 8, auth.NATIVE)
    assert parse_change_user(payload, CLIENT.SECURE_CONNECTION | CLIENT.PLUGIN_AUTH).database is None


def test_auth_switch_round_trip() -> None:
    """An AuthSwitchRequest carries the plugin and the NUL-terminated nonce; the parser keeps
    the data as sent (the plugin takes the length it needs)."""
    payload = make_auth_switch_request(auth.NATIVE, NONCE)
    assert payload == b"\xfe" + b"mysql_native_password\x00" + NONCE + b"\x00"
    assert parse_auth_switch_request(payload) == (auth.NATIVE, NONCE + b"\x00")


def test_auth_more_data() -> None:
    """AuthMoreData is 0x01 followed by its data."""
    assert make_auth_more_data(auth.SHA2_FAST_AUTH_SUCCESS) == b"\x01\x03"


# --- MariaDB's extended capabilities ------------------------------------------------------

def test_mariadb_greeting_extended_capabilities() -> None:
    """MariaDB 10.11 clears CLIENT_MYSQL and announces bulk operations, extended and cached
    metadata and progress reports in the filler: bits 32-63 of the parsed capabilities."""
    h = parse_handshake_v10(vectors.MARIADB_GREETING_PAYLOAD)
    assert not h.capabilities & CLIENT_MYSQL
    assert h.mariadb_capabilities == 0x1D
    assert h.capabilities >> 32 == 0x1D
    assert h.capabilities & MARIADB_CLIENT_STMT_BULK_OPERATIONS
    assert h.capabilities & MARIADB_CLIENT_EXTENDED_METADATA
    assert h.capabilities & MARIADB_CLIENT_CACHE_METADATA
    assert h.capabilities & MARIADB_CLIENT_PROGRESS


def test_mariadb_greeting_rebuilt_byte_for_byte() -> None:
    """Rebuilt from what was parsed, the greeting is the server's, filler included."""
    assert make_handshake_v10(parse_handshake_v10(vectors.MARIADB_GREETING_PAYLOAD)) == \
        vectors.MARIADB_GREETING_PAYLOAD


def test_filler_ignored_when_client_mysql_is_set() -> None:
    """With CLIENT_MYSQL set the filler is only filler, whatever it holds."""
    h = parse_handshake_v10(GREETING_PAYLOAD)
    payload = bytearray(make_handshake_v10(attrs.evolve(h, capabilities=(h.capabilities & 0xFFFFFFFF) | CLIENT_MYSQL)))
    at = payload.index(h.auth_data[8:]) - 4
    payload[at:at + 4] = b"\x1d\x00\x00\x00"
    parsed = parse_handshake_v10(bytes(payload))
    assert parsed.capabilities >> 32 == 0 and parsed.mariadb_capabilities == 0


def test_extended_capabilities_need_client_mysql_clear() -> None:
    h = parse_handshake_v10(vectors.MARIADB_GREETING_PAYLOAD)
    with pytest.raises(ValueError):
        make_handshake_v10(attrs.evolve(h, capabilities=h.capabilities | CLIENT_MYSQL))
    with pytest.raises(ValueError):
        make_handshake_response41(HandshakeResponse41(
            CAPS | MARIADB_CLIENT_EXTENDED_METADATA, 1 << 24, 45, "app", b""))


def test_handshake_response_extended_capabilities() -> None:
    """A MariaDB client with CLIENT_MYSQL clear sends its extended capabilities in the
    last 4 bytes of the 23-byte filler; they come back as bits 32-63."""
    caps = (CAPS & ~CLIENT_MYSQL) | MARIADB_CLIENT_STMT_BULK_OPERATIONS | MARIADB_CLIENT_EXTENDED_METADATA
    payload = make_handshake_response41(HandshakeResponse41(caps, 1 << 24, 45, "app", b"x" * 20, "db",
                                                           auth.NATIVE))
    assert payload[9:28] == b"\x00" * 19 and payload[28:32] == b"\x0c\x00\x00\x00"
    assert int.from_bytes(payload[:4], "little") == caps & 0xFFFFFFFF
    assert parse_handshake_response41(payload).capabilities == caps


def test_handshake_response_filler_ignored_with_client_mysql() -> None:
    """A client that sets CLIENT_MYSQL (PyMySQL, MySQL's libraries) sends no extended
    capabilities, whatever its filler holds."""
    payload = bytearray(make_handshake_response41(HandshakeResponse41(CAPS, 1 << 24, 45, "app", b"x" * 20)))
    payload[28:32] = b"\x0c\x00\x00\x00"
    assert parse_handshake_response41(bytes(payload)).capabilities == CAPS


def test_libmariadb_response_extended_capabilities() -> None:
    """The mariadb command-line client's answer to MariaDB's greeting asks for progress
    reports, bulk operations, extended and cached metadata (0x1d) in the filler."""
    response = parse_handshake_response41(vectors.LIBMARIADB_RESPONSE_PAYLOAD)
    assert response.username == "app" and response.database == "app"
    assert response.attributes["_client_name"] == "libmariadb"
    assert not response.capabilities & CLIENT_MYSQL
    assert response.capabilities >> 32 == 0x1D
