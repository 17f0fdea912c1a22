"""Signal handlers that do nothing in signal context but hand the work to the reactor.

Python runs a signal handler between two bytecodes of whatever the main thread
is doing, which may be the middle of writing a log line with the log file's
lock held.  A handler that logs then waits for a lock its own thread holds,
and the process hangs for good: Twisted's SIGTERM and SIGINT handlers log
("Received SIGTERM, shutting down.") before they stop the reactor, so a
SIGTERM that lands inside a log write left pyproxy running forever.

So every handler pyproxy installs only queues its action with
``callFromThread`` (a deque append and a write to the reactor's waker, neither
of which takes a lock a logger holds), and :func:`defer_reactor_handlers`
moves Twisted's own handlers out of signal context the same way.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from typing import Any

# The signals the reactor takes on start (SIGBREAK exists on Windows only).
REACTOR_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK")
                        if hasattr(signal, name))


def on_reactor(reactor: Any, signum: int, action: Callable[[], Any]) -> None:
    """Runs ``action`` in the reactor's loop each time ``signum`` arrives."""
    signal.signal(signum, lambda number, frame: reactor.callFromThread(action))


def defer_reactor_handlers(reactor: Any, signums: Iterable[int] = REACTOR_SIGNALS) -> list[int]:
    """Makes the Python handlers now installed for ``signums`` (the reactor's own,
    installed when it started) run in the reactor's loop instead of in signal
    context; returns the signals it moved.

    Call it once the reactor runs (``callWhenRunning``): the reactor installs its
    handlers during start-up.  The default actions stay as they are (SIGINT's
    KeyboardInterrupt must interrupt whatever runs, not a reactor call).
    """
    moved = []
    for signum in signums:
        handler = signal.getsignal(signum)
        if (not callable(handler) or handler is signal.default_int_handler
                or getattr(handler, "deferred_to_reactor", False)):
            continue

        def deferred(number: int, frame: Any, handler: Callable[..., Any] = handler) -> None:
            # The frame is dropped: it would be stale by the time the handler runs.
            reactor.callFromThread(handler, number, None)

        deferred.deferred_to_reactor = True  # type: ignore[attr-defined]
        signal.signal(signum, deferred)
        moved.append(signum)
    return moved
