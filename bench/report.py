"""What the benchmark prints: progress lines on stderr while it runs; then on stdout the header
(machine, versions, settings), one table of every workload's figures, directly and through
pyproxy with their ratio, and the problems seen; and the same results as JSON on request.

Each workload's rows are built here from its results, so the table's labels and formats are all
in one place. The formatting helpers are pure and unit-tested in tests/test_bench.py.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.clients import driver_version

if TYPE_CHECKING:
    from bench.harness import Bench

REPO_ROOT = Path(__file__).resolve().parent.parent

#: One line of the table: workload, metric, direct figure, pyproxy figure, format of both.
Row = tuple[str, str, Any, Any, str]


def ratio(proxy: float | None, direct: float | None) -> float | None:
    if proxy is None or direct is None or direct == 0:
        return None
    return proxy / direct


def get(result: dict[str, Any] | None, key: str, convert: Any = None) -> Any:
    """result[key] (converted), or "FAILED" when the measurement did not complete."""
    if result is None:
        return "FAILED"
    value = result.get(key)
    return convert(value) if convert is not None and value is not None else value


def fmt_value(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(value, spec)


def render_table(rows: list[Row]) -> str:
    """Align (workload, metric, direct, pyproxy, format) rows, with a proxy/direct ratio column.

    ``direct`` and ``pyproxy`` are numbers, strings or None; the ratio is shown only when both
    are numbers.
    """
    header = ("workload", "metric", "direct", "pyproxy", "ratio")
    lines: list[tuple[str, ...]] = []
    previous = None
    for workload, metric, direct, proxy, spec in rows:
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      for v in (direct, proxy))
        r = ratio(proxy, direct) if numeric else None
        lines.append((
            workload if workload != previous else "",
            metric,
            fmt_value(direct, spec),
            fmt_value(proxy, spec),
            "-" if r is None else f"{r:.2f}",
        ))
        previous = workload
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) if lines else len(header[i])
              for i in range(5)]

    def join(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i])
                         for i, cell in enumerate(cells)).rstrip()

    out = [join(header), "  ".join("-" * w for w in widths)]
    previous_group = None
    for (workload, *_), line in zip(rows, lines):
        group = workload.split()[0]
        if previous_group is not None and group != previous_group:
            out.append("")
        previous_group = group
        out.append(join(line))
    return "\n".join(out)


def summarize_errors(errors: dict[str, int]) -> str | int:
    """0 when there are none, else 'total (code x count, ...)'."""
    total = sum(errors.values())
    if not total:
        return 0
    parts = ", ".join(f"{code}x{count}" for code, count in
                      sorted(errors.items(), key=lambda kv: -kv[1]))
    return f"{total} ({parts})"


def pin_share(pinned: int, sessions: int, reasons: dict[str, int] | None = None) -> str:
    """'0.0% of 1234', with the reasons when sessions were pinned; 'no logins' without any."""
    if not sessions:
        return "no logins"
    text = f"{100.0 * pinned / sessions:.1f}% of {sessions}"
    if reasons:
        text += " (" + ", ".join(f"{reason} x{n}" for reason, n in
                                 sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))) + ")"
    return text


def borrows_text(borrows: int | None, waits: int | None) -> str | None:
    if borrows is None:
        return None
    return f"{borrows} ({waits if waits is not None else '?'} waited)"


def pyproxy_rows(workload: str, result: dict[str, Any] | None) -> list[Row]:
    """Table rows for the pin share and pool figures of ``result["pyproxy_log"]`` (pyproxy column
    only); "FAILED" when the measurement did not complete."""
    review = None if result is None else result.get("pyproxy_log") or {}

    def value(key: str) -> Any:
        return "FAILED" if review is None else review.get(key)

    borrows = ("FAILED" if review is None
               else borrows_text(review.get("borrows"), review.get("waits")))
    return [
        (workload, "pinned share", None, value("pinned_share"), ""),
        (workload, "pyproxy borrows (waited)", None, borrows, ""),
        (workload, "resets per 1,000 borrows", None, value("resets_per_1000"), ".2f"),
        (workload, "borrow wait p50 ms (recent)", None, value("wait_p50_ms"), ".3f"),
        (workload, "borrow wait p99 ms (recent)", None, value("wait_p99_ms"), ".3f"),
    ]


def fault_rows(workload: str, event: str, fault_metric: str, direct: dict[str, Any] | None,
               through: dict[str, Any] | None) -> list[Row]:
    """Table rows of a fault workload (failover, restart) for both sides; ``event`` names the
    moment recovery is measured from ("flip", "kill"), ``fault_metric`` what ``fault_ms``
    measured."""
    def recovered(result: dict[str, Any] | None) -> Any:
        if result is None:
            return "FAILED"
        return f"{result['recovered']}/{result['clients']}"

    return [
        (workload, "transactions committed", get(direct, "committed"),
         get(through, "committed"), "d"),
        (workload, "client errors", get(direct, "errors", summarize_errors),
         get(through, "errors", summarize_errors), "d"),
        (workload, "  of transaction writers", get(direct, "errors_transactions", summarize_errors),
         get(through, "errors_transactions", summarize_errors), "d"),
        (workload, "  of autocommit writers", get(direct, "errors_autocommit", summarize_errors),
         get(through, "errors_autocommit", summarize_errors), "d"),
        (workload, "reconnects", get(direct, "reconnects"), get(through, "reconnects"), "d"),
        (workload, f"first write after the {event} ms", get(direct, "first_ms"),
         get(through, "first_ms"), ".0f"),
        (workload, "all clients writing again p50 ms", get(direct, "p50_ms"),
         get(through, "p50_ms"), ".0f"),
        (workload, "all clients writing again max ms", get(direct, "max_ms"),
         get(through, "max_ms"), ".0f"),
        (workload, "clients writing again", recovered(direct), recovered(through), ""),
        (workload, fault_metric, get(direct, "fault_ms"), get(through, "fault_ms"), ".0f"),
        (workload, "balance sums intact", get(direct, "sums_intact"),
         get(through, "sums_intact"), ""),
    ]


#: Per fault workload: the moment recovery is measured from, and what ``fault_ms`` measures.
FAULTS = {
    "failover": ("flip", "SET GLOBAL read_only=1 took ms"),
    "restart": ("kill", "server accepting again after the kill ms"),
}


def progress(message: str) -> None:
    """One line on stderr, with the time, while the run goes on."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def select_rows(workload: str, direct: dict[str, Any] | None, through: dict[str, Any] | None
                ) -> list[Row]:
    """Table rows of one ``select`` concurrency level for both sides."""
    w = workload
    return [
        (w, "qps", get(direct, "qps"), get(through, "qps"), ".0f"),
        (w, "p50 latency ms", get(direct, "p50_ms"), get(through, "p50_ms"), ".3f"),
        (w, "p99 latency ms", get(direct, "p99_ms"), get(through, "p99_ms"), ".3f"),
        (w, "errors", get(direct, "errors", summarize_errors),
         get(through, "errors", summarize_errors), "d"),
        (w, "pyproxy CPU us/query", None, get(through, "pyproxy_cpu_us_per_query"),
         ".1f"),
        (w, "pyproxy CPU % of a core", None, get(through, "pyproxy_cpu_pct"), ".0f"),
        (w, "mariadbd CPU us/query", get(direct, "mariadbd_cpu_us_per_query"),
         get(through, "mariadbd_cpu_us_per_query"), ".1f"),
        (w, "loadgen CPU us/query", get(direct, "loadgen_cpu_us_per_query"),
         get(through, "loadgen_cpu_us_per_query"), ".1f"),
        (w, "server statements/query", get(direct, "server_statements_per_query"),
         get(through, "server_statements_per_query"), ".2f"),
        (w, "machine CPU busy %", get(direct, "machine_busy_pct"),
         get(through, "machine_busy_pct"), ".0f"),
        *pyproxy_rows(w, through),
    ]


#: The figures of a storm (bench.workloads.storm.storm_figures), whatever it went through:
#: metric, result key, conversion, format.
STORM_FIGURES = (
    ("cycles/s (successful)", "cycles_per_s", None, ".0f"),
    ("succeeded", "succeeded", None, "d"),
    ("errors", "errors", summarize_errors, "d"),
    ("p50 cycle ms", "p50_ms", None, ".1f"),
    ("p99 cycle ms", "p99_ms", None, ".1f"),
    ("max cycle ms", "max_ms", None, ".1f"),
    ("wall s", "wall_s", None, ".2f"),
    ("max server conns", "max_server_connections", None, "d"),
)


def storm_rows(workload: str, direct: dict[str, Any] | None, through: dict[str, Any] | None
               ) -> list[Row]:
    """Table rows of the connection storm for both sides."""
    w = workload
    return [
        *((w, metric, get(direct, key, convert), get(through, key, convert), spec)
          for metric, key, convert, spec in STORM_FIGURES),
        (w, "pyproxy CPU us/cycle", None, get(through, "pyproxy_cpu_us_per_cycle"), ".0f"),
        (w, "mariadbd CPU us/cycle", get(direct, "mariadbd_cpu_us_per_cycle"),
         get(through, "mariadbd_cpu_us_per_cycle"), ".0f"),
        *pyproxy_rows(w, through),
    ]


def balanced_rows(workload: str, storm: dict[str, Any] | None, kill: dict[str, Any] | None
                  ) -> list[Row]:
    """Table rows of two pyproxy instances behind HAProxy sharing one budget (pyproxy column
    only: the direct storm is the ``storm`` workload's): the storm, then the kill."""
    w = workload
    logs = {} if storm is None else storm.get("pyproxy_logs") or {}
    instance_rows = [row for name in sorted(logs)
                     for row in pyproxy_rows(f"{w} {name}", {"pyproxy_log": logs[name]})]
    clients = ("FAILED" if storm is None else
               " / ".join(fmt_value(logs[name].get("sessions"), "d") for name in sorted(logs)))
    return [
        (w, "instances behind HAProxy", None, get(storm, "instances"), "d"),
        (w, "budget (pool max_connections)", None, get(storm, "budget"), "d"),
        *((w, metric, None, get(storm, key, convert), spec)
          for metric, key, convert, spec in STORM_FIGURES),
        (w, "server Max_used_connections", None, get(storm, "server_max_used_connections"),
         "d"),
        (w, "clients per instance", None, clients, ""),
        (w, "pyproxy CPU us/cycle (both)", None, get(storm, "pyproxy_cpu_us_per_cycle"),
         ".0f"),
        (w, "mariadbd CPU us/cycle", None, get(storm, "mariadbd_cpu_us_per_cycle"), ".0f"),
        *instance_rows,
        (w, "kill -9: leases of the killed", None, get(kill, "dead_share"), "d"),
        (w, "kill -9: leases of the survivor", None, get(kill, "survivor_share"), "d"),
        (w, "kill -9: lease_seconds", None, get(kill, "lease_seconds"), "g"),
        (w, "kill -9: survivor uses its share ms", None, get(kill, "first_extra_ms"), ".0f"),
        (w, "kill -9: survivor has all the budget ms", None, get(kill, "whole_budget_ms"), ".0f"),
        (w, "kill -9: its leases gone from Redis ms", None, get(kill, "leases_gone_ms"),
         ".0f"),
        (w, "kill -9: survivor's client errors", None, get(kill, "errors", summarize_errors),
         "d"),
        (w, "kill -9: max server conns", None, get(kill, "max_server_connections"), "d"),
    ]


def idle_rows(workload: str, result: dict[str, Any]) -> list[Row]:
    """Table rows of the idle clients (pyproxy only: there is no direct baseline)."""
    mib = 1024 * 1024
    w = workload
    rss_closed = result["rss_after_close"]
    return [
        (w, "logged in", None, result["opened"], "d"),
        (w, "login errors", None, summarize_errors(result["errors"]), "d"),
        (w, "pyproxy RSS before MiB", None, result["rss_before"] / mib, ".1f"),
        (w, "pyproxy RSS after MiB", None, result["rss_after"] / mib, ".1f"),
        (w, "bytes/idle conn", None, result["bytes_per_idle_connection"], ".0f"),
        (w, "pyproxy RSS after close MiB", None,
         rss_closed / mib if rss_closed else None, ".1f"),
        (w, "server conns (backend)", None, result["server_connections"], "d"),
        *pyproxy_rows(w, result),
    ]


def header(bench: Bench, fault_health_interval: float) -> list[str]:
    """The lines above the table; the machine and the settings go in ``bench.results`` too."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always",
                                 "--dirty"], capture_output=True, text=True, timeout=10,
                                check=False).stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        commit = "?"
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    a = bench.args
    bench.results["machine"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)), "cpu_model": model, "memory": mem,
        "kernel": platform.release(), "python": platform.python_version(),
        "mariadb": bench.mariadb_version, "driver": driver_version(bench.driver),
        "pyproxy_commit": commit,
    }
    m = bench.results["machine"]
    bench.results["settings"] = {
        "duration_s": a.duration, "warmup_s": a.warmup, "pool_size": a.pool_size,
        "workers": a.workers,
        "rows": a.rows, "clients": a.clients, "procs": a.procs,
        "storm_clients": a.storm_clients, "storm_concurrency": a.storm_concurrency,
        "storm_server_max_connections": a.storm_server_max_connections,
        "lease_seconds": a.lease_seconds,
        "idle_clients": a.idle_clients, "pyproxy_log_level": bench.log_level,
        "failover_clients": a.failover_clients, "failover_before_s": a.failover_before,
        "failover_after_s": a.failover_after, "accounts": a.accounts,
        "endpoint_delay_s": a.endpoint_delay,
        "fault_health_interval_s": fault_health_interval,
    }
    faults = ([f"faults:   {a.failover_clients} writing clients, the fault after "
               f"{a.failover_before:g}s, then {a.failover_after:g}s; pyproxy health "
               f"interval {fault_health_interval:g}s; direct endpoint flips "
               f"{a.endpoint_delay:g}s after a failover"]
              if {"failover", "restart"} & set(a.workloads) else [])
    lease = "pyproxy's default" if a.lease_seconds is None else f"{a.lease_seconds:g}s"
    balanced = ([f"balanced: 2 pyproxy instances behind HAProxy (send-proxy-v2), a budget of "
                 f"{a.pool_size} shared through Redis, lease_seconds {lease}"]
                if "balanced" in a.workloads else [])
    return [
        f"date:     {m['date']}",
        f"machine:  nproc={m['nproc']}, {m['cpu_model']}, {m['memory']} RAM, "
        f"Linux {m['kernel']}",
        f"server:   MariaDB {m['mariadb']} (sandbox)",
        f"clients:  {m['driver']}, Python {m['python']}",
        f"pyproxy:  {m['pyproxy_commit']}, pool max_connections={a.pool_size}, "
        f"workers={a.workers}, log level {bench.log_level}",
        f"settings: {a.duration:g}s per measurement after {a.warmup:g}s warm-up, "
        f"{a.rows} rows, load from up to {a.procs} processes; storm {a.storm_clients} "
        f"clients/{a.storm_concurrency} concurrent vs server max_connections="
        f"{a.storm_server_max_connections}",
        *faults,
        *balanced,
    ]


def print_report(bench: Bench, header_lines: list[str]) -> None:
    """The header, the table and the problems seen on stdout; the results as JSON with --json."""
    a = bench.args
    print("\n".join(["", "pyproxy benchmark", *header_lines, ""]))
    if bench.rows:
        print(render_table(bench.rows))
        print()
    for table in bench.extra_tables:
        print(table)
        print()
    print(f"pyproxy logs and configs: {bench.log_dir}")
    if bench.problems:
        print("problems seen:")
        for problem in bench.problems:
            print(f"  - {problem}")
    else:
        print("problems seen: none (no client errors, no pyproxy warnings or errors"
              + ("; the fault workloads' errors are expected and counted in the table)"
                 if {"failover", "restart"} & set(a.workloads) else ")"))
    bench.results["problems"] = bench.problems
    if a.json:
        Path(a.json).write_text(json.dumps(bench.results, indent=2, default=str) + "\n")
        print(f"JSON written to {a.json}")
