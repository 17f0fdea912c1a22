"""The load processes: how the load is spread over them, starting them, hearing from them, and
ending them, on a normal run and on an interrupted one.

Protocol: a worker opens its connections, puts ("ready", index, n) on the queue, waits for the
``go`` event, reads the window from ``times`` (monotonic clock, shared by all processes on
Linux), runs, and puts ("result", index, {...}). Any failure before "ready" is reported as
("error", index, message). Every wait is bounded. The workers themselves live with their
workloads in bench/workloads/.
"""

from __future__ import annotations

import collections
import queue
import resource
import time
from array import array
from typing import Any

from bench.errors import BenchError

READY_TIMEOUT = 120.0

_children: list[Any] = []          # multiprocessing.Process objects


def split_evenly(total: int, parts: int) -> list[int]:
    """Split ``total`` into ``parts`` non-negative integers that differ by at most one."""
    if parts <= 0:
        raise ValueError("parts must be positive")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def sleep_until(deadline: float) -> None:
    """Sleep until the monotonic clock reaches ``deadline`` (at once when it has)."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


def raise_nofile() -> None:
    """Raise this process's open-files limit to the hard limit: one file per connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def spawn(ctx: Any, func: Any, jobs: list[tuple[Any, ...]]) -> tuple[list[Any], Any]:
    """Start one process per job, running ``func(index, *job[:-1], results, *job[-1])``.

    The last item of a job holds the shared objects (events, arrays), which go after the queue.
    Returns the processes and the queue they report on.
    """
    results = ctx.Queue()
    procs = []
    for index, job in enumerate(jobs):
        proc = ctx.Process(target=func, args=(index, *job[:-1], results, *job[-1]),
                           daemon=True)
        procs.append(proc)
    for proc in procs:
        proc.start()
        _children.append(proc)
    return procs, results


def collect(procs: list[Any], results: Any, kind: str, timeout: float,
            what: str) -> dict[int, Any]:
    """Wait for one ``kind`` message per process; an "error" message or a timeout aborts."""
    got: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(procs):
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"{what}: {len(procs) - len(got)} of {len(procs)} load "
                             f"processes did not report '{kind}' within {timeout:g}s")
        try:
            message, index, payload = results.get(timeout=min(left, 1.0))
        except queue.Empty:
            dead = [i for i, p in enumerate(procs) if i not in got and not p.is_alive()]
            if dead:
                raise BenchError(f"{what}: load process {dead[0]} exited with code "
                                 f"{procs[dead[0]].exitcode} before reporting '{kind}'"
                                 ) from None
            continue
        if message == "error":
            raise BenchError(f"{what}: {payload}")
        if message == kind:
            got[index] = payload
    return got


def reap(procs: list[Any]) -> None:
    """Wait for the processes to end (they have reported), terminating any that do not."""
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        if proc in _children:
            _children.remove(proc)


def stop_all() -> None:
    """End every load process still running: at exit, and on a signal or Ctrl-C."""
    for proc in list(_children):
        if proc.is_alive():
            proc.terminate()
    for proc in list(_children):
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    _children.clear()


def merge_errors(reports: Any) -> tuple[collections.Counter[str], str | None]:
    """Errors by code summed over the reports of several load processes, and the first
    process's first error message (each report has ``errors`` and ``first_error``)."""
    errors: collections.Counter[str] = collections.Counter()
    first_error = None
    for report in reports:
        errors.update(report["errors"])
        first_error = first_error or report["first_error"]
    return errors, first_error


def merge_latencies(reports: Any) -> array[float]:
    """The latencies of several load processes' reports in one array (each report has
    ``latencies``, the bytes of an ``array("d")``, as sent over the queue)."""
    latencies = array("d")
    for report in reports:
        chunk = array("d")
        chunk.frombytes(report["latencies"])
        latencies.extend(chunk)
    return latencies
