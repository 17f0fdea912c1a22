"""Signal handlers never do their work in signal context, and a log line written from
one (Twisted's "Received SIGTERM") cannot hang the process on the log's lock."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from pyproxy import signal_handlers


class QueueingReactor:
    """Records callFromThread calls instead of running them."""

    def __init__(self) -> None:
        self.queued: list[tuple[Any, tuple[Any, ...]]] = []

    def callFromThread(self, function: Any, *args: Any) -> None:  # noqa: N802 - Twisted's name
        self.queued.append((function, args))


@pytest.fixture
def restore_handlers() -> Iterator[None]:
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.usefixtures("restore_handlers")
def test_the_reactors_handler_runs_in_its_loop_not_in_signal_context() -> None:
    calls: list[int] = []
    signal.signal(signal.SIGTERM, lambda number, frame: calls.append(number))
    reactor = QueueingReactor()
    assert signal_handlers.defer_reactor_handlers(reactor, (signal.SIGTERM,)) == [signal.SIGTERM]
    signal.raise_signal(signal.SIGTERM)
    assert calls == []  # nothing ran in the handler itself
    ((function, args),) = reactor.queued
    function(*args)
    assert calls == [signal.SIGTERM]
    # Moving them again (a second start) does not wrap the wrapper.
    assert signal_handlers.defer_reactor_handlers(reactor, (signal.SIGTERM,)) == []


@pytest.mark.usefixtures("restore_handlers")
def test_default_actions_are_left_alone() -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert signal_handlers.defer_reactor_handlers(QueueingReactor(), (signal.SIGINT, signal.SIGTERM)) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.usefixtures("restore_handlers")
def test_on_reactor_queues_the_action() -> None:
    reactor = QueueingReactor()
    done: list[str] = []
    signal_handlers.on_reactor(reactor, signal.SIGUSR1, lambda: done.append("stats"))
    signal.raise_signal(signal.SIGUSR1)
    assert done == []
    ((function, args),) = reactor.queued
    function(*args)
    assert done == ["stats"]


# A process that logs as pyproxy does and gets SIGTERM while a log line is being
# written, the lock held: the handler runs at the next bytecode, inside the write.
SIGTERM_INSIDE_A_LOG_WRITE = textwrap.dedent("""
    import os, signal, sys
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner
    from pyproxy import logs, signal_handlers

    class Tripwire:
        armed = False
        def write(self, text):
            sys.stdout.write(text)
            if self.armed:
                self.armed = False
                os.kill(os.getpid(), signal.SIGTERM)
            return len(text)
        def flush(self):
            sys.stdout.flush()
        def isatty(self):
            return False

    tripwire = Tripwire()
    logs.configure(stream=tripwire)
    globalLogBeginner.beginLoggingTo([logs.twisted_observer()], redirectStandardIO=False)
    if sys.argv[1] == "deferred":
        reactor.callWhenRunning(signal_handlers.defer_reactor_handlers, reactor)

    def arm():
        tripwire.armed = True
        logs.get_logger().info("armed")

    reactor.callWhenRunning(arm)
    reactor.run()
    print("stopped", flush=True)
""")


@pytest.mark.parametrize("handlers", ["twisted's own", "deferred"])
def test_sigterm_during_a_log_write_stops_the_reactor(handlers: str) -> None:
    """With structlog's own writer (a plain lock) this hung for good in both cases
    until the reactor's handler was moved out of signal context."""
    result = subprocess.run([sys.executable, "-c", SIGTERM_INSIDE_A_LOG_WRITE, handlers],
                            capture_output=True, text=True, timeout=30, check=False)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert lines[-1] == "stopped", lines
    events = [line for line in lines if line.startswith("{")]
    assert any('"armed"' in line for line in events), events
    assert any("Received SIGTERM" in line for line in events), events
