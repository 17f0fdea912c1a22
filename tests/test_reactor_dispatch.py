"""pyproxy.reactor_dispatch: the epoll loop body without the legacy log context."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import abstract, epollreactor, selectreactor
from twisted.python import failure
from twisted.trial import unittest

from pyproxy import reactor_dispatch


class Reader(abstract.FileDescriptor):
    """One end of a socket pair, recording what the reactor makes of it."""

    def __init__(self, reactor: Any, sock: socket.socket, explode: BaseException | None = None,
                 explode_on_loss: bool = False) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.explode = explode
        self.explode_on_loss = explode_on_loss
        self.received: list[bytes] = []
        self.lost: list[failure.Failure] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> Any:
        if self.explode is not None:
            raise self.explode
        data = self.sock.recv(100)
        if not data:
            from twisted.internet.main import CONNECTION_DONE  # noqa: PLC0415
            return CONNECTION_DONE
        self.received.append(data)
        return None

    def connectionLost(self, reason: failure.Failure) -> None:
        self.lost.append(reason)
        abstract.FileDescriptor.connectionLost(self, reason)
        if self.explode_on_loss:
            raise RuntimeError("connectionLost went wrong")


class LeanDispatchTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = epollreactor.EPollReactor()
        self.assertTrue(reactor_dispatch.install(self.reactor))
        self.addCleanup(self.reactor._poller.close)
        self.pairs: list[tuple[socket.socket, socket.socket]] = []

    def tearDown(self) -> None:
        for ours, theirs in self.pairs:
            ours.close()
            theirs.close()

    def reader(self, **kwargs: Any) -> tuple[Reader, socket.socket]:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        self.pairs.append((ours, theirs))
        reader = Reader(self.reactor, ours, **kwargs)
        self.reactor.addReader(reader)
        return reader, theirs

    def test_ready_descriptors_are_read(self) -> None:
        first, first_peer = self.reader()
        second, second_peer = self.reader()
        first_peer.send(b"one")
        second_peer.send(b"two")
        self.reactor.doIteration(0)
        self.assertEqual((first.received, second.received), ([b"one"], [b"two"]))
        self.reactor.doIteration(0)  # nothing more ready: nothing more read
        self.assertEqual(first.received, [b"one"])

    def test_peer_close_disconnects_cleanly(self) -> None:
        reader, peer = self.reader()
        peer.close()
        self.reactor.doIteration(0)
        [reason] = reader.lost
        self.assertNotIn(reader, self.reactor.getReaders())

    def test_exception_in_do_read_disconnects_that_descriptor_only(self) -> None:
        """As in the stock loop: logged, and the descriptor is disconnected."""
        broken, broken_peer = self.reader(explode=ValueError("bad read"))
        fine, fine_peer = self.reader()
        broken_peer.send(b"x")
        fine_peer.send(b"y")
        self.reactor.doIteration(0)
        self.assertEqual(len(broken.lost), 1)
        self.assertEqual(fine.received, [b"y"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_exception_in_connection_lost_is_logged_and_the_loop_goes_on(self) -> None:
        """What callWithLogger caught (an exception from connectionLost) is logged, and
        the other ready descriptors are still served in the same iteration."""
        broken, broken_peer = self.reader(explode=ValueError("bad read"), explode_on_loss=True)
        fine, fine_peer = self.reader()
        broken_peer.send(b"x")
        fine_peer.send(b"y")
        self.reactor.doIteration(0)
        self.assertEqual(fine.received, [b"y"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.flushLoggedErrors(ValueError)

    def test_stale_descriptor_is_skipped(self) -> None:
        """An event for a descriptor removed earlier in the same batch is ignored."""
        reader, peer = self.reader()
        peer.send(b"z")
        self.reactor._selectables.pop(reader.fileno())
        self.reactor.doIteration(0)
        self.assertEqual(reader.received, [])


class OtherReactorsTests(unittest.TestCase):
    def test_other_reactors_are_left_alone(self) -> None:
        reactor = selectreactor.SelectReactor()
        before = reactor.doIteration
        self.assertFalse(reactor_dispatch.install(reactor))
        self.assertEqual(reactor.doIteration, before)
