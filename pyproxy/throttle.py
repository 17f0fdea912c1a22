"""Wrong passwords slowed down per source address.

After ``[auth] max_failures`` refused logins from one address within
``[auth] failure_window`` seconds, every answer to a login from that address
(accepted or refused) waits ``failure_delay`` seconds, one more
``failure_delay`` per further failure, at most ``failure_delay_max``.  Every
answer, not only refusals: a guesser that gave up on slow answers would
otherwise learn from a fast one that it guessed right.

It is the server's max_connect_errors without its lock-out: nobody is ever
refused for good, an address's failures are forgotten ``failure_window``
seconds after the last one, and other addresses are never delayed.  A login
that succeeds does not wipe the count (a guesser holding one good account
could otherwise reset it at will).  Addresses kept are bounded, so a flood
from ever new addresses cannot grow it: the least recently failed go first.
"""

from __future__ import annotations

import collections

import attrs
from twisted.internet.interfaces import IReactorTime


@attrs.define(eq=False)
class LoginThrottle:
    """Failures per address, and the delay the next answer to that address takes.

    Args:
        clock: the reactor (a Clock in tests).
        failure_delay: seconds added per failure past ``max_failures``; 0 turns it off.
        max_failures: failures within ``window`` an address may have undelayed.
        window: seconds after its last failure an address's count is forgotten.
        delay_max: the longest delay.
        max_addresses: addresses remembered at most.
    """

    clock: IReactorTime
    failure_delay: float = 1.0
    max_failures: int = 5
    window: float = 60.0
    delay_max: float = 5.0
    max_addresses: int = 65536
    # Address -> (failures, time of the last one), least recently failed first.
    _failures: collections.OrderedDict[str, tuple[int, float]] = attrs.field(
        factory=collections.OrderedDict)

    def _count(self, address: str) -> int:
        entry = self._failures.get(address)
        if entry is None:
            return 0
        if self.clock.seconds() - entry[1] >= self.window:
            del self._failures[address]
            return 0
        return entry[0]

    def delay(self, address: str) -> float:
        """Seconds the answer to a login from ``address`` waits now (0 for most)."""
        if not self.failure_delay:
            return 0.0
        excess = self._count(address) - self.max_failures
        if excess < 0:
            return 0.0
        return min(self.delay_max, self.failure_delay * (excess + 1))

    def failed(self, address: str) -> None:
        """A login from ``address`` was refused (a wrong password, an unknown user)."""
        count = self._count(address) + 1
        self._failures[address] = (count, self.clock.seconds())
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def failures(self, address: str) -> int:
        """Failures counted for ``address`` (for logs and tests)."""
        return self._count(address)
