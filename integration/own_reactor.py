"""A reactor of the test's own, run until one piece of Twisted code has finished.

pyproxy's modules take their reactor as an argument, so an integration test can drive them
over real sockets and threads without the global reactor: a fresh SelectReactor (never
installed), run in the test's thread until the Deferred that ``start`` returns fires, or
``timeout`` seconds pass.  A reactor runs once, so each call makes a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.selectreactor import SelectReactor
from twisted.python.failure import Failure


def run_until_done(start: Callable[[Any], Any], timeout: float = 30.0) -> Any:
    """Runs ``start(reactor)`` in a new reactor and returns what it fires with.

    Raises:
        whatever the Deferred failed with; TimeoutError when it did not fire in time.
    """
    reactor = SelectReactor()
    outcome: list[Any] = []

    def stop(_: object = None) -> None:
        if reactor.running:
            reactor.stop()

    def go() -> None:
        d = defer.maybeDeferred(start, reactor)
        d.addBoth(outcome.append)
        d.addBoth(stop)

    reactor.callWhenRunning(go)
    reactor.callLater(timeout, stop)
    reactor.run(installSignalHandlers=False)
    if not outcome:
        raise TimeoutError(f"did not finish within {timeout}s")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]
