"""A leaner event loop body for Twisted's epoll reactor.

The epoll reactor hands every ready descriptor to ``_doReadOrWrite`` through
``twisted.python.log.callWithLogger``, which asks the transport for its log
prefix and pushes and pops a legacy log context around the call: about a
microsecond per event, as much as pyproxy spends on a query's bookkeeping.
pyproxy logs through structlog with its own bound context (client id,
backend id), so that context is never read.

``install`` replaces the reactor's ``doIteration`` with the same loop minus
that wrapper: the same poller, the same ``_doReadOrWrite`` (which turns an
exception in doRead/doWrite into a disconnection), and an exception that
escapes it (from a connectionLost) is logged, as ``callWithLogger`` does.
Only the "system" field of legacy ``twisted.python.log`` messages written
while an event is handled changes (it reads "pyproxy").  Any other reactor
is left alone.
"""

from __future__ import annotations

import errno
from types import MethodType
from typing import Any

from twisted.python import log

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # not Linux
    EPollReactor = None  # type: ignore[assignment,misc]


def _do_poll(self: Any, timeout: float | None) -> None:
    """EPollReactor.doPoll, calling ``_doReadOrWrite`` directly."""
    try:
        events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    handle = self._doReadOrWrite
    selectables = self._selectables
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        try:
            handle(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.err(system="pyproxy")


def install(reactor: Any) -> bool:
    """Gives an epoll reactor the lean loop body; True if it did."""
    if EPollReactor is None or type(reactor) is not EPollReactor:
        return False
    reactor.doIteration = MethodType(_do_poll, reactor)
    return True
