"""PROXY protocol on pyproxy's listeners (``[proxy] proxy_protocol = true``): behind a load
balancer, every connection starts with a PROXY header naming the client's real address.

Twisted's ``haproxy:`` endpoint wraps every connection in a protocol wrapper for its whole
life, which puts one more Python call on each read and write, and it starts the wrapped
protocol as soon as the TCP connection is up: pyproxy would send its greeting, and log and
limit the connection, before it knows whose it is. Here a small reader takes the header first,
then hands the very same transport to the listener's own protocol and steps aside, so the
per-query path is exactly what it is without PROXY protocol. ``transport.getPeer()`` then gives
the client's address (the header's source), for logs, limits, error messages and the admin
console alike; Twisted's own ``startTLS`` replaces ``getHandle`` on the transport the same way.

A connection whose first bytes are not a valid header, or that sends none within
``[proxy] handshake_timeout``, is closed without a word: no MySQL greeting is ever sent to
someone who skipped the balancer.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import protocol
from twisted.internet.address import IPv4Address, IPv6Address

from pyproxy import logs
from pyproxy.wire import proxy_header


class ProxyHeaderFactory(protocol.Factory):
    """Wraps a listener's factory: each connection reads its PROXY header first."""

    def __init__(self, wrapped: protocol.Factory, reactor: Any, timeout: float,
                 max_pending: int) -> None:
        self.wrapped = wrapped
        self.reactor = reactor
        self.timeout = timeout
        # Connections still owing their header; past this many, new ones are closed at once.
        self.max_pending = max_pending
        self.pending = 0
        self.refused = 0
        self.log = logs.get_logger(component="proxy_protocol")

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr: Any) -> HeaderReader:
        return HeaderReader(self)


class HeaderReader(protocol.Protocol):
    """Until the header is complete: buffers, parses, and on success becomes the wrapped
    factory's protocol on the same transport."""

    def __init__(self, factory: ProxyHeaderFactory) -> None:
        self.factory = factory
        self.buffer = b""
        self.timer: Any = None
        self.counted = False

    def connectionMade(self) -> None:
        factory = self.factory
        if factory.pending >= factory.max_pending:
            self._refuse("too many connections waiting for their PROXY header")
            return
        factory.pending += 1
        self.counted = True
        self.timer = factory.reactor.callLater(factory.timeout, self._refuse,
                                               "no PROXY header in time")

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        try:
            header = proxy_header.parse(self.buffer)
        except proxy_header.BadProxyHeader as exc:
            self._refuse(str(exc))
            return
        if header is None:
            return
        self._done()
        transport = self.transport
        if header.source is not None:
            host, port = header.source
            kind = IPv4Address if ipaddress.ip_address(host).version == 4 else IPv6Address
            address = kind("TCP", host, port)
            transport.getPeer = lambda: address  # type: ignore[method-assign]
        wrapped = self.factory.wrapped.buildProtocol(transport.getPeer())
        if wrapped is None:
            transport.loseConnection()
            return
        # From here on the transport reads into the listener's protocol directly.
        transport.protocol = wrapped  # type: ignore[attr-defined]
        wrapped.makeConnection(transport)
        rest = self.buffer[header.length:]
        self.buffer = b""
        if rest:
            wrapped.dataReceived(rest)

    def connectionLost(self, reason: Any = None) -> None:
        self._done()

    def _done(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.counted:
            self.counted = False
            self.factory.pending -= 1

    def _refuse(self, why: str) -> None:
        self._done()
        self.factory.refused += 1
        self.factory.log.info("proxy_header_refused", reason=why,
                              peer=logs.format_address(self.transport.getPeer()))
        self.transport.abortConnection()
