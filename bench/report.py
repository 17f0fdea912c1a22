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


def storm_rows(workload: str, direct: dict[str, Any] | None, through: dict[str, Any] | None
               ) -> list[Row]:
    """Table rows of the connection storm for both sides."""
    w = workload
    return [
        (w, "cycles/s (successful)", get(direct, "cycles_per_s"),
         get(through, "cycles_per_s"), ".0f"),
        (w, "succeeded", get(direct, "succeeded"), get(through, "succeeded"), "d"),
        (w, "errors", get(direct, "errors", summarize_errors),
         get(through, "errors", summarize_errors), "d"),
        (w, "p50 cycle ms", get(direct, "p50_ms"), get(through, "p50_ms"), ".1f"),
        (w, "p99 cycle ms", get(direct, "p99_ms"), get(through, "p99_ms"), ".1f"),
        (w, "max cycle ms", get(direct, "max_ms"), get(through, "max_ms"), ".1f"),
        (w, "wall s", get(direct, "wall_s"), get(through, "wall_s"), ".2f"),
        (w, "max server conns", get(direct, "max_server_connections"),
         get(through, "max_server_connections"), "d"),
        (w, "pyproxy CPU us/cycle", None, get(through, "pyproxy_cpu_us_per_cycle"), ".0f"),
        (w, "mariadbd CPU us/cycle", get(direct, "mariadbd_cpu_us_per_cycle"),
         get(through, "mariadbd_cpu_us_per_cycle"), ".0f"),
        *pyproxy_rows(w, through),
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
