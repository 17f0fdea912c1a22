"""What Twisted's epoll loop body costs per event, stock and as pyproxy runs it.

    python3 bench/event_loop.py [--events N]

One socket pair is read through a bare EPollReactor: each round writes one
byte to the far end and runs one reactor iteration, whose one event reads
it.  The same rounds run on a reactor with the stock loop body (every event
wrapped in ``log.callWithLogger``) and on one with pyproxy's
(``pyproxy.reactor_dispatch``), alternately, in one run; the figure is the
best of five.  The difference is what pyproxy saves per event: two per
query, where the relay (bench/relay.py) pays the stock body four times.
Wall time, so a quiet machine gives the steadiest figures; the syscalls
(send, epoll_wait, recv) are in both.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import abstract, epollreactor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pyproxy import reactor_dispatch  # noqa: E402


class _Reader(abstract.FileDescriptor):
    def __init__(self, reactor: Any, sock: socket.socket) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.reads = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        self.sock.recv(64)
        self.reads += 1

    def logPrefix(self) -> str:
        return "reader"


def per_event(events: int, lean: bool) -> float:
    """Microseconds per round (write, one iteration, one event read)."""
    reactor = epollreactor.EPollReactor()
    if lean:
        reactor_dispatch.install(reactor)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    try:
        reader = _Reader(reactor, ours)
        reactor.addReader(reader)
        start = time.perf_counter()
        for _ in range(events):
            theirs.send(b"x")
            reactor.doIteration(0)
        elapsed = time.perf_counter() - start
        if reader.reads != events:
            raise RuntimeError(f"{reader.reads} of {events} events were read")
        reactor.removeReader(reader)
        return elapsed / events * 1e6
    finally:
        ours.close()
        theirs.close()
        reactor._poller.close()


def measure(events: int, repeats: int = 5) -> dict[str, float]:
    best = {"stock": float("inf"), "pyproxy": float("inf")}
    for _ in range(repeats):
        best["stock"] = min(best["stock"], per_event(events, lean=False))
        best["pyproxy"] = min(best["pyproxy"], per_event(events, lean=True))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50000)
    args = parser.parse_args()
    best = measure(args.events)
    print(f"epoll loop body, per event (write + iteration + read), best of 5 x {args.events}: "
          f"stock {best['stock']:.2f} us, pyproxy {best['pyproxy']:.2f} us, "
          f"saved {best['stock'] - best['pyproxy']:.2f} us")


if __name__ == "__main__":
    main()
