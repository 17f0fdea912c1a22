"""pyproxy.wire.proxy_header and pyproxy.proxy_protocol: PROXY v1/v2 headers, with the bytes
HAProxy 2.6 (Debian 12) sent for ``send-proxy`` and ``send-proxy-v2``, each followed by the
client's ``hello``; and the reader that takes a header, then steps aside."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pyproxy.proxy_protocol import ProxyHeaderFactory
from pyproxy.wire import proxy_header
from pyproxy.wire.proxy_header import BadProxyHeader, ProxyHeader

# Captured from HAProxy 2.6.12: client 127.0.0.1:42902 / [::1]:47592 -> frontend port 49255.
V1_TCP4 = b"PROXY TCP4 127.0.0.1 127.0.0.1 42902 49255\r\nhello"
V1_TCP6 = b"PROXY TCP6 ::1 ::1 47592 49255\r\nhello"
# Client 127.0.0.1:40464 / [::1]:36252 -> 52133.
V2_TCP4 = (b"\r\n\r\n\x00\r\nQUIT\n!\x11\x00\x0c\x7f\x00\x00\x01\x7f\x00\x00\x01\x9e\x10\xcb\xa5"
           b"hello")
V2_TCP6 = (b"\r\n\r\n\x00\r\nQUIT\n!!\x00$" + b"\x00" * 15 + b"\x01" + b"\x00" * 15 + b"\x01"
           + b"\x8d\x9c\xcb\xa5hello")


@pytest.mark.parametrize(("data", "source"), [
    (V1_TCP4, ("127.0.0.1", 42902)),
    (V1_TCP6, ("::1", 47592)),
    (V2_TCP4, ("127.0.0.1", 40464)),
    (V2_TCP6, ("::1", 36252)),
])
def test_real_headers_give_the_client_address(data: bytes, source: tuple[str, int]) -> None:
    header = proxy_header.parse(data)
    assert header == ProxyHeader(len(data) - len(b"hello"), source)
    assert data[header.length:] == b"hello"


@pytest.mark.parametrize("data", [V1_TCP4, V1_TCP6, V2_TCP4, V2_TCP6])
def test_every_prefix_asks_for_more(data: bytes) -> None:
    """However the header is cut into segments, nothing is decided before it is whole."""
    end = len(data) - len(b"hello")
    for cut in range(end):
        assert proxy_header.parse(data[:cut]) is None, cut
    assert proxy_header.parse(data[:end]) is not None


def test_headers_without_a_client_address() -> None:
    # v2 LOCAL (a balancer's own health check) and v1 UNKNOWN: no address, header consumed.
    local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
    assert proxy_header.parse(local + b"x") == ProxyHeader(16)
    assert proxy_header.parse(b"PROXY UNKNOWN\r\nx") == ProxyHeader(15)
    assert proxy_header.parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n") == ProxyHeader(35)
    # v2 PROXY over UNSPEC or a UNIX socket: no usable address either; TLVs are skipped.
    unspec = b"\r\n\r\n\x00\r\nQUIT\n\x21\x00\x00\x03abc"
    assert proxy_header.parse(unspec) == ProxyHeader(19)
    with_tlv = V2_TCP4[:14] + b"\x00\x11" + V2_TCP4[16:28] + b"\x04\x00\x02ab"
    assert proxy_header.parse(with_tlv) == ProxyHeader(33, ("127.0.0.1", 40464))


@pytest.mark.parametrize(("data", "why"), [
    (b"\x0a\x00\x00\x00", "no PROXY protocol header"),           # a MySQL client's first bytes
    (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
    (b"PROXZ", "no PROXY protocol header"),
    (b"\r\n\r\n\x00\r\nQUIX", "no PROXY protocol header"),
    (b"PROXY " + b"A" * 120, "longer than 107"),
    (b"PROXY TCP4 127.0.0.1 127.0.0.1 1\r\n", "is not 'PROXY TCP4"),
    (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", "is not 'PROXY TCP4"),
    (b"PROXY TCP4 ::1 ::1 1 2\r\n", "is not TCP4"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "is not TCP6"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", "is not a port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n", "is not a port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n", "is not a port"),
    (b"PROXY TCP4 1.2.3.\xff 1.2.3.4 1 2\r\n", "not ASCII"),
    (b"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x0c", "0x22 is not 0x21 or 0x20"),
    (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff", "longer than 4096"),
    (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04abcd", "need 12 bytes"),
])
def test_bad_headers(data: bytes, why: str) -> None:
    with pytest.raises(BadProxyHeader, match=why):
        proxy_header.parse(data)


class Recorder(protocol.Protocol):
    """The listener's own protocol: records what it is given."""

    def __init__(self, addr: Any) -> None:
        self.addr = addr
        self.received = b""
        self.made = False
        self.lost = False

    def connectionMade(self) -> None:
        self.made = True
        self.transport.write(b"greeting")

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class Listener(protocol.Factory):
    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        self.built.append(Recorder(addr))
        return self.built[-1]


class Transport(StringTransport):
    """A StringTransport with the ``protocol`` attribute and abort of a TCP connection."""

    protocol: Any = None
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


def connect(factory: ProxyHeaderFactory) -> tuple[Any, Transport]:
    reader = factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 5555))
    transport = Transport(peerAddress=IPv4Address("TCP", "10.0.0.9", 5555))
    transport.protocol = reader
    reader.makeConnection(transport)
    return reader, transport


def test_reader_hands_the_transport_over_with_the_clients_address() -> None:
    listener, clock = Listener(), Clock()
    factory = ProxyHeaderFactory(listener, clock, timeout=10, max_pending=5)
    reader, transport = connect(factory)
    assert transport.value() == b"" and not listener.built  # no greeting before the header
    end = len(V2_TCP6) - len(b"hello")
    for byte in range(end - 1):
        reader.dataReceived(V2_TCP6[byte:byte + 1])
    assert not listener.built and factory.pending == 1
    reader.dataReceived(V2_TCP6[end - 1:end] + b"hel")
    (client,) = listener.built
    assert client.addr == IPv6Address("TCP", "::1", 36252) == transport.getPeer()
    assert transport.protocol is client and client.transport is transport
    assert client.made and transport.value() == b"greeting" and client.received == b"hel"
    assert factory.pending == 0 and not clock.getDelayedCalls()
    reader.connectionLost()  # never called by the transport now; harmless if it were
    assert factory.pending == 0


def test_reader_refuses_a_client_that_skips_the_balancer() -> None:
    listener, clock = Listener(), Clock()
    factory = ProxyHeaderFactory(listener, clock, timeout=10, max_pending=5)
    reader, transport = connect(factory)
    reader.dataReceived(b"\x0a5.5.5-")
    assert transport.aborted and not listener.built and transport.value() == b""
    assert factory.refused == 1 and factory.pending == 0


def test_reader_gives_up_after_the_handshake_timeout_and_bounds_pending() -> None:
    listener, clock = Listener(), Clock()
    factory = ProxyHeaderFactory(listener, clock, timeout=10, max_pending=2)
    (r1, t1), (r2, t2) = connect(factory), connect(factory)
    _, t3 = connect(factory)
    assert t3.aborted and factory.pending == 2  # the third waits for no one
    r1.dataReceived(V1_TCP4[:10])
    clock.advance(9.9)
    assert not t1.aborted
    clock.advance(0.1)
    assert t1.aborted and t2.aborted and factory.pending == 0 and factory.refused == 3
    r2.connectionLost()
    assert factory.pending == 0


def test_reader_keeps_the_real_peer_for_a_local_header() -> None:
    listener, clock = Listener(), Clock()
    factory = ProxyHeaderFactory(listener, clock, timeout=10, max_pending=5)
    reader, transport = connect(factory)
    reader.dataReceived(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")
    (client,) = listener.built
    assert client.addr == IPv4Address("TCP", "10.0.0.9", 5555) and client.received == b""
