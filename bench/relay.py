"""A bare 1:1 TCP relay on Twisted, the floor for pyproxy's CPU per query.

Each client connection gets one connection of its own to the server, and bytes are forwarded
both ways unread: no login, no pool, no packet scanning. What pyproxy spends per query above
this relay, in the same run and on the same reactor, is what its pooling and protocol work
cost; the relay itself is what any Python proxy on Twisted pays for moving the bytes.

Run as its own process so that its CPU can be read from ``/proc``::

    python3 -m bench.relay --target 127.0.0.1:3306 [--port 0]

It prints ``listening on PORT`` once it accepts connections, and runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import protocol, reactor
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class _Peer:
    """Pauses and resumes one side's reading when the other side's write buffer fills and
    drains, so a slow reader holds back its writer instead of growing the buffer."""

    def __init__(self, transport: object) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        self.transport.loseConnection()  # type: ignore[attr-defined]


class Outbound(protocol.Protocol):
    """The relay's connection to the server, paired with one client connection."""

    def __init__(self, inbound: Inbound) -> None:
        self.inbound = inbound

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.inbound.attach(self)

    def dataReceived(self, data: bytes) -> None:
        self.inbound.transport.write(data)

    def connectionLost(self, reason: object = None) -> None:
        self.inbound.transport.loseConnection()


class Inbound(protocol.Protocol):
    """One client connection: reading waits until the server connection is up."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.outbound: Outbound | None = None

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.transport.pauseProducing()
        factory = protocol.ClientFactory()
        factory.protocol = lambda: Outbound(self)  # type: ignore[assignment]
        factory.clientConnectionFailed = lambda connector, reason: self.transport.loseConnection()  # type: ignore[method-assign]
        reactor.connectTCP(self.target[0], self.target[1], factory)  # type: ignore[attr-defined]

    def attach(self, outbound: Outbound) -> None:
        self.outbound = outbound
        outbound.transport.registerProducer(_Peer(self.transport), True)
        self.transport.registerProducer(_Peer(outbound.transport), True)
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        assert self.outbound is not None
        self.outbound.transport.write(data)

    def connectionLost(self, reason: object = None) -> None:
        if self.outbound is not None:
            self.outbound.transport.loseConnection()


class RelayFactory(protocol.ServerFactory):
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target

    def buildProtocol(self, addr: object) -> Inbound:
        return Inbound(self.target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of the server")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = a free one)")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    listening = reactor.listenTCP(args.port, RelayFactory((host, int(port))),  # type: ignore[attr-defined]
                                  backlog=1024, interface="127.0.0.1")
    print(f"listening on {listening.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
