"""The PROXY protocol header (versions 1 and 2) that a load balancer sends before the client's
own bytes, so that pyproxy learns the client's real address.

HAProxy's specification (``proxy-protocol.txt``) defines both: version 1 is one text line,
``PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n`` (or ``TCP6``, or ``UNKNOWN``), at most 107
bytes; version 2 is binary: a 12-byte signature, a version/command byte (0x21 PROXY, 0x20
LOCAL for the balancer's own health checks), an address family/transport byte, a 2-byte
length and the addresses (then TLVs, which pyproxy skips). Only the source address is used.

:func:`parse` is pure: it is given everything received so far and says whether more bytes are
needed, where the header ends and what source address it carries, or raises
:class:`BadProxyHeader`.
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: The longest version-1 line the specification allows, CRLF included.
V1_MAX = 107
#: A version-2 header's length field allows 65,535 bytes of addresses and TLVs; balancers send
#: far fewer, and a longer one is refused before it is buffered.
V2_MAX_BODY = 4096

_V2_PROXY, _V2_LOCAL = 0x21, 0x20
_FAMILIES = {0x11: ("inet", 12), 0x12: ("inet", 12), 0x21: ("inet6", 36), 0x22: ("inet6", 36)}


class BadProxyHeader(ValueError):
    """The bytes are not a PROXY protocol header pyproxy accepts."""


@attrs.frozen
class ProxyHeader:
    """A complete header: its length in bytes, and the client's address and port, or None
    when the balancer speaks for itself (v2 LOCAL, v1 UNKNOWN, or an unspecified family)."""

    length: int
    source: tuple[str, int] | None = None


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``, or None when more bytes are needed to tell."""
    if data[:1] == b"\r":
        return _parse_v2(data)
    if data[:1] == b"P":
        return _parse_v1(data)
    if data:
        raise BadProxyHeader("no PROXY protocol header")
    return None


def _parse_v1(data: bytes) -> ProxyHeader | None:
    if not V1_PREFIX.startswith(data[:len(V1_PREFIX)]):
        raise BadProxyHeader("no PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise BadProxyHeader("PROXY v1 line longer than 107 bytes")
        return None
    try:
        fields = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise BadProxyHeader("PROXY v1 line is not ASCII") from None
    length = end + 2
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(length)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise BadProxyHeader("PROXY v1 line is not 'PROXY TCP4|TCP6 src dst sport dport'")
    _, family, source, destination, source_port, destination_port = fields
    version = 4 if family == "TCP4" else 6
    for address in (source, destination):
        try:
            if ipaddress.ip_address(address).version != version:
                raise ValueError
        except ValueError:
            raise BadProxyHeader(f"PROXY v1 address {address!r} is not {family}") from None
    for port in (source_port, destination_port):
        if not port.isdigit() or int(port) > 65535 or (len(port) > 1 and port[0] == "0"):
            raise BadProxyHeader(f"PROXY v1 port {port!r} is not a port")
    return ProxyHeader(length, (source, int(source_port)))


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if not V2_SIGNATURE.startswith(data[:len(V2_SIGNATURE)]):
        raise BadProxyHeader("no PROXY protocol header")
    if len(data) < 16:
        return None
    command, family, body = struct.unpack_from("!BBH", data, 12)
    if command not in (_V2_PROXY, _V2_LOCAL):
        raise BadProxyHeader(f"PROXY v2 version/command byte 0x{command:02x} is not 0x21 or 0x20")
    if body > V2_MAX_BODY:
        raise BadProxyHeader(f"PROXY v2 header of {body} bytes is longer than {V2_MAX_BODY}")
    length = 16 + body
    if len(data) < length:
        return None
    if command == _V2_LOCAL or family not in _FAMILIES:
        # LOCAL: the balancer's own connection; UNSPEC or UNIX: no address pyproxy can use.
        return ProxyHeader(length)
    kind, size = _FAMILIES[family]
    if body < size:
        raise BadProxyHeader(f"PROXY v2 addresses need {size} bytes, the header has {body}")
    if kind == "inet":
        source = str(ipaddress.IPv4Address(data[16:20]))
        port = struct.unpack_from("!H", data, 24)[0]
    else:
        source = str(ipaddress.IPv6Address(data[16:32]))
        port = struct.unpack_from("!H", data, 48)[0]
    return ProxyHeader(length, (source, port))
