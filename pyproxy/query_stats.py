"""Counters of the per-query path: commands by type, bytes each way, statement latency.

They are counted on every statement, so they are plain ints in lists and
slots of one object per process, bumped inline by the code that handles the
bytes (pyproxy.frontend, pyproxy.command_phase, pyproxy.login): no call into
prometheus_client (which takes a lock per update), no allocation.  The
metrics page (pyproxy.metrics) and the admin console's SHOW STATS read them
when asked, as they read the pools.

The latency histogram has fixed buckets (LATENCY_BUCKETS, seconds): a
relayed command's time from its dispatch to the end of its reply lands in
the first bucket whose bound is at least that long (``bisect_left``), the
last slot holding those past every bound.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import ISSLTransport

# Upper bounds (seconds) of the statement-latency buckets.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class QueryStats:
    """Since pyproxy started, for every client together."""

    __slots__ = ("commands", "bytes_in", "bytes_out", "latency", "latency_sum", "logins_tls",
                 "logins_plain")

    def __init__(self) -> None:
        # Commands received from clients, indexed by their command byte.
        self.commands = [0] * 256
        # Bytes read from clients, and written to them.
        self.bytes_in = 0
        self.bytes_out = 0
        # Relayed commands by LATENCY_BUCKETS bucket (not cumulative; the last
        # slot is past every bound), and their total time.
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        # Client logins over TLS and over plain TCP (or a UNIX socket).
        self.logins_tls = 0
        self.logins_plain = 0

    def latency_cumulative(self) -> list[tuple[float, int]]:
        """(bound, commands at most that long) per bucket, +Inf last: a
        Prometheus histogram's buckets."""
        out, total = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.latency):
            total += count
            out.append((bound, total))
        return out


def is_secure(client: Any) -> bool:
    """Whether a client connection runs over TLS: its own ``secure`` flag, or a
    transport that is a TLS one (Twisted's startTLS makes it provide
    ISSLTransport)."""
    return bool(getattr(client, "secure", False)) or ISSLTransport.providedBy(getattr(client, "transport", None))
