"""What pyproxy's own log says about a workload: its pool figures and pin reasons (the
``pool_stats`` and ``pin_summary`` events SIGUSR1 makes it log), the share of sessions pinned, and
any warnings, errors or tracebacks.

The parsers are pure and unit-tested in tests/test_bench.py; :func:`review` signals pyproxy and
reads its log.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import time
from typing import Any

from bench.report import pin_share
from bench.targets import USER, PyProxy


def newest_stats(lines: list[str], pool: str) -> dict[str, Any]:
    """The newest ``pool_stats`` event of ``pool``, the newest ``pin_summary`` and the newest
    ``client_stats`` in pyproxy's JSON log lines: ``{"pool": {...} or None, "pins": {reason:
    count} or None, "clients": {...} or None}``."""
    found: dict[str, Any] = {"pool": None, "pins": None, "clients": None, "resets": None}
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "pool_stats" and event.get("pool") == pool:
            found["pool"] = event
        elif event.get("event") == "pin_summary":
            found["pins"] = dict(event.get("pins") or {})
            found["resets"] = event.get("resets")
        elif event.get("event") == "client_stats":
            found["clients"] = event
    return found


def sessions_delta(current: dict[str, Any], previous: dict[str, Any] | None) -> int | None:
    """Client connections pyproxy accepted between two :func:`newest_stats` snapshots
    (its ``client_stats`` counter is cumulative); None without a ``client_stats``."""
    accepted = (current.get("clients") or {}).get("accepted")
    if accepted is None:
        return None
    return int(accepted) - int(((previous or {}).get("clients") or {}).get("accepted", 0))


def stats_delta(current: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """One workload's pool figures from two :func:`newest_stats` snapshots.

    Counters (borrows, waits, timeouts, opened, pins per reason) are cumulative in pyproxy, so
    the previous snapshot is subtracted (``previous`` None: since start). The wait percentiles
    are pyproxy's own, over its recent waits, and are taken as they are.
    """
    pool = current.get("pool") or {}
    before = (previous or {}).get("pool") or {}
    out: dict[str, Any] = {}
    for key in ("borrows", "waits", "timeouts", "opened"):
        out[key] = pool[key] - before.get(key, 0) if key in pool else None
    for key, name in (("borrow_wait_p50_ms", "wait_p50_ms"), ("borrow_wait_p99_ms", "wait_p99_ms"),
                      ("borrow_wait_max_ms", "wait_max_ms")):
        out[name] = pool.get(key)
    resets = current.get("resets")
    out["resets"] = None if resets is None else resets - ((previous or {}).get("resets") or 0)
    pins = current.get("pins")
    if pins is None:
        out["pins"] = None
    else:
        old = (previous or {}).get("pins") or {}
        out["pins"] = {reason: n - old.get(reason, 0) for reason, n in sorted(pins.items())
                       if n - old.get(reason, 0) > 0}
    return out


def count_log_events(lines: list[str]) -> tuple[collections.Counter[str], list[str]]:
    """Count pyproxy's JSON log events by 'level:event'; return odd lines (tracebacks) too."""
    counts: collections.Counter[str] = collections.Counter()
    odd: list[str] = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                odd.append(line)
                continue
            counts[f"{event.get('level', '?')}:{event.get('event', '?')}"] += 1
        elif "Traceback" in line or "Error" in line or "Unhandled" in line:
            odd.append(line)
    return counts, odd


def workload_lines(proxy: PyProxy, timeout: float = 10.0) -> list[str]:
    """SIGUSR1 to pyproxy, then its log lines since the last review, up to the
    ``pin_summary`` the signal produced (at most ``timeout`` seconds)."""
    lines: list[str] = []
    if not proxy.alive():
        return proxy.new_log_lines()
    os.kill(proxy.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while True:
        lines += proxy.new_log_lines()
        if any('"pin_summary"' in line for line in lines) or time.monotonic() >= deadline:
            return lines
        time.sleep(0.05)


def review(proxy: PyProxy | None, label: str, problems: list[str]) -> dict[str, Any]:
    """Pin share and pool figures of the workload just run, from pyproxy's log (see
    bench/run.py's docstring); warnings and errors in the log are added to ``problems``."""
    if proxy is None:
        return {}
    lines = workload_lines(proxy)
    counts, odd = count_log_events(lines)
    snapshot = newest_stats(lines, USER)
    if snapshot["pins"] is None:
        problems.append(f"{label}: pyproxy logged no pin_summary after SIGUSR1")
    delta = stats_delta(snapshot, proxy.last_stats)
    # Logins are logged at debug level only: the accepted connections stand for them.
    sessions = sessions_delta(snapshot, proxy.last_stats)
    if sessions is None:
        sessions = counts.get("info:client_connected", 0) + counts.get("debug:client_connected", 0)
    if snapshot["pool"] is not None and snapshot["pins"] is not None:
        proxy.last_stats = snapshot
    pinned = counts.get("info:session_pinned", 0)
    if delta["timeouts"]:
        problems.append(f"{label}: {delta['timeouts']} borrows timed out in pyproxy")
    if delta["pins"] is not None and sum(delta["pins"].values()) != pinned:
        problems.append(f"{label}: {pinned} session_pinned events but pin_summary "
                        f"grew by {delta['pins']}")
    borrows, resets = delta["borrows"], delta["resets"]
    figures = {
        "sessions": sessions, "pinned": pinned, "pin_reasons": delta["pins"],
        "pinned_share": pin_share(pinned, sessions, delta["pins"]),
        # Connections reset before another client got them, per 1,000 borrows
        # (a borrow is one transaction, or one statement in autocommit).
        "resets_per_1000": (1000.0 * resets / borrows) if resets is not None and borrows else None,
        **{k: v for k, v in delta.items() if k != "pins"},
    }
    bad = {k: v for k, v in counts.items() if not k.startswith(("info:", "debug:"))}
    if bad:
        problems.append(f"{label}: pyproxy logged "
                        + ", ".join(f"{k} x{v}" for k, v in sorted(bad.items())))
    if odd:
        problems.append(f"{label}: pyproxy log has {len(odd)} other error lines, "
                        f"first: {odd[0][:300]}")
    if not proxy.alive():
        problems.append(f"{label}: pyproxy exited with code {proxy.process.returncode}"
                        f"; tail of {proxy.log_path}:\n{proxy.tail()}")
    return figures
