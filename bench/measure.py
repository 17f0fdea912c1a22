"""The figures the benchmark takes, and how: CPU time and resident memory of a process (from
/proc), how busy the whole machine is, the server's own counters, nearest-rank percentiles, and
how soon clients were writing again after a fault.

The parsers are pure and unit-tested in tests/test_bench.py; the readers around them read /proc
or ask a server, nothing else.
"""

from __future__ import annotations

import math
import os
import resource
import threading
import time
from typing import Any

from bench.clients import error_code


def percentile(sorted_values: Any, pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence; None when it is empty."""
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, math.ceil(pct / 100.0 * n))
    return float(sorted_values[min(rank, n) - 1])


def parse_proc_stat_times(text: str, clk_tck: int) -> tuple[float, float]:
    """utime and stime in seconds from the text of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may contain spaces, so the
    fields are counted from the last ``)``: utime and stime are fields 14 and 15.
    """
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) / clk_tck, int(fields[12]) / clk_tck


def parse_proc_stat_cpu(text: str, clk_tck: int) -> float:
    """utime + stime in seconds from the text of ``/proc/<pid>/stat``."""
    return sum(parse_proc_stat_times(text, clk_tck))


def parse_vmrss(text: str) -> int:
    """VmRSS in bytes from the text of ``/proc/<pid>/status``."""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit.lower() != "kb":
                raise ValueError(f"unexpected VmRSS unit {unit!r}")
            return int(value) * 1024
    raise ValueError("no VmRSS line (process gone, or a kernel thread)")


def parse_machine_cpu(text: str) -> tuple[int, int]:
    """(busy, total) jiffies summed over all CPUs from the first line of ``/proc/stat``."""
    values = [int(v) for v in text.splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    # already counted in user/nice.
    total = sum(values[:8])
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return total - idle, total


def rusage_cpu() -> float:
    """User + system CPU seconds of this process (a load process, all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_pids(pid: int) -> list[int]:
    """The live children of ``pid`` (pyproxy's workers, under ``--workers``)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(child) for child in f.read().split()]
    except OSError:
        return []


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and of its live children: with workers, pyproxy
    is a supervisor and the processes that serve."""
    total = 0.0
    for one in (pid, *child_pids(pid)):
        try:
            with open(f"/proc/{one}/stat") as f:
                total += parse_proc_stat_cpu(f.read(), os.sysconf("SC_CLK_TCK"))
        except OSError:
            if one == pid:
                raise
    return total


def proc_rss(pid: int) -> int:
    """Resident memory of ``pid`` and its live children, in bytes."""
    total = 0
    for one in (pid, *child_pids(pid)):
        try:
            with open(f"/proc/{one}/status") as f:
                total += parse_vmrss(f.read())
        except OSError:
            if one == pid:
                raise
    return total


def machine_cpu() -> tuple[int, int]:
    with open("/proc/stat") as f:
        return parse_machine_cpu(f.read())


def server_statements(conn: Any) -> int:
    """The server's Questions counter (statements sent by all clients), read over ``conn``."""
    with conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
        return int(cur.fetchone()[1])


class ThreadsConnectedMonitor:
    """Polls Threads_connected from a root connection over the unix socket; keeps the max."""

    def __init__(self, server: Any, interval: float = 0.01, cap: float = 600.0) -> None:
        self.conn = server.connect()
        self.interval = interval
        self.cap = cap
        self.max = 0
        self.samples = 0
        self.error: str | None = None
        self._lock = threading.Lock()  # one PyMySQL connection, used from two threads
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        with self._lock, self.conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
            return int(cur.fetchone()[1]) - 1  # not counting this connection

    def max_used(self) -> int:
        """The server's Max_used_connections, not counting this connection: a peak no poll
        can miss, but since the server started (MariaDB resets it only on a restart, or with
        FLUSH GLOBAL STATUS from 11.5 on)."""
        with self._lock, self.conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Max_used_connections'")
            return int(cur.fetchone()[1]) - 1

    def _run(self) -> None:
        deadline = time.monotonic() + self.cap
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.max = max(self.max, self.sample())
                self.samples += 1
            except Exception as exc:  # noqa: BLE001
                self.error = f"{error_code(exc)} {exc}"
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> ThreadsConnectedMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            self.conn.close()


def recovery_figures(event_at: float, firsts: list[float | None]) -> dict[str, Any]:
    """How fast clients were writing again after a fault at ``event_at``.

    ``firsts`` holds, per client, when its first transaction begun after the fault committed
    (None: it never did before the end). Returns the count of clients, how many wrote again,
    the first of them and the median and slowest client, in milliseconds after the fault
    (None when no client wrote again).
    """
    delays = sorted((first - event_at) * 1e3 for first in firsts if first is not None)
    return {
        "clients": len(firsts), "recovered": len(delays),
        "first_ms": delays[0] if delays else None,
        "p50_ms": percentile(delays, 50), "max_ms": delays[-1] if delays else None,
    }
