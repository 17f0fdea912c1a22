"""pyproxy.throttle: wrong passwords slowed down per address, on a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from pyproxy.throttle import LoginThrottle


def throttle(**settings: float) -> tuple[LoginThrottle, Clock]:
    clock = Clock()
    return LoginThrottle(clock, **{"failure_delay": 1.0, "max_failures": 3, "window": 60.0,
                                   "delay_max": 4.0, **settings}), clock  # type: ignore[arg-type]


def test_delay_starts_after_max_failures_and_grows_to_its_cap() -> None:
    """max_failures failures are answered at once; from then on each answer to that address
    waits failure_delay more per failure, up to delay_max."""
    limiter, _ = throttle()
    delays = []
    for _ in range(8):
        delays.append(limiter.delay("10.0.0.1"))
        limiter.failed("10.0.0.1")
    assert delays == [0, 0, 0, 1.0, 2.0, 3.0, 4.0, 4.0]


def test_other_addresses_are_never_delayed() -> None:
    limiter, _ = throttle()
    for _ in range(10):
        limiter.failed("10.0.0.1")
    assert limiter.delay("10.0.0.1") == 4.0
    assert limiter.delay("10.0.0.2") == 0 and limiter.failures("10.0.0.2") == 0


def test_failures_are_forgotten_after_the_window() -> None:
    """No lock-out: failure_window seconds after its last failure an address starts afresh;
    a failure inside the window keeps the count."""
    limiter, clock = throttle()
    for _ in range(4):
        limiter.failed("10.0.0.1")
    clock.advance(59)
    assert limiter.delay("10.0.0.1") == 2.0
    limiter.failed("10.0.0.1")
    clock.advance(59)
    assert limiter.failures("10.0.0.1") == 5
    clock.advance(1)
    assert limiter.delay("10.0.0.1") == 0 and limiter.failures("10.0.0.1") == 0


def test_off_and_bounded() -> None:
    """failure_delay 0 turns it off; the addresses kept are bounded, least recently failed
    forgotten first."""
    off, _ = throttle(failure_delay=0)
    for _ in range(10):
        off.failed("10.0.0.1")
    assert off.delay("10.0.0.1") == 0
    small = LoginThrottle(Clock(), max_failures=1, max_addresses=2)
    for address in ("a", "b", "a", "c"):
        small.failed(address)
    assert (small.failures("a"), small.failures("b"), small.failures("c")) == (2, 0, 1)
