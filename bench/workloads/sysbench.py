"""The ``sysbench`` workloads: sysbench's own OLTP scripts, directly, through a bare Twisted
relay (:mod:`bench.relay`) and through pyproxy, in one run.

sysbench generates its load in C, so the cores are left to the server and the proxy, and the
proxy's CPU per query is the figure to compare. Three scripts, each at every --sysbench-threads
level:

point_select-ps
    ``oltp_point_select --db-ps-mode=auto``: one server-side prepared ``SELECT c FROM sbtest1
    WHERE id=?`` per transaction (COM_STMT_EXECUTE), autocommit.
point_select-text
    the same with ``--db-ps-mode=disable`` (COM_QUERY).
read_write
    ``oltp_read_write --db-ps-mode=auto``: BEGIN, 10 point selects, 4 range selects, 2 updates,
    a delete and an insert, COMMIT; the connection is held for the whole transaction.

Each target gets one sysbench run of ``--warmup`` + ``--sysbench-time`` seconds; only the
seconds after the warm-up are counted, from sysbench's per-second reports. ``qps`` is their
queries per second; ``proxy CPU us/query`` is the relay's or pyproxy's user+system CPU over
that window divided by those queries, ``mariadbd CPU us/query`` likewise; ``sysbench CPU
us/query`` is sysbench's own over its whole run; ``p95 ms`` is sysbench's, over its whole run. The relay and
pyproxy each get a fresh process per measurement.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError
from bench.measure import machine_cpu, proc_cpu, server_statements
from bench.report import progress
from bench.targets import DATABASE, USER, PyProxy

if TYPE_CHECKING:
    from bench.harness import Bench

#: Label -> (sysbench script, --db-ps-mode).
SCRIPTS = {
    "point_select-ps": ("oltp_point_select", "auto"),
    "point_select-text": ("oltp_point_select", "disable"),
    "read_write": ("oltp_read_write", "auto"),
}
SIDES = ("direct", "relay", "pyproxy")
TABLE_SIZE = 10_000


class Relay:
    """``python3 -m bench.relay`` in front of the server, as a process of its own."""

    def __init__(self, server: Any) -> None:
        from pyproxy import sandbox  # noqa: PLC0415
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.relay", "--target", f"{server.host}:{server.port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=sandbox.child_env(), cwd=str(_repo_root()), start_new_session=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = re.match(r"listening on (\d+)", line)
        if not match:
            self.stop()
            raise BenchError(f"the relay did not start: {line.strip()!r}")
        self.port = int(match.group(1))

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        from pyproxy import sandbox  # noqa: PLC0415
        sandbox.terminate(self.process)


def _repo_root() -> Any:
    from pathlib import Path  # noqa: PLC0415
    return Path(__file__).resolve().parent.parent.parent


def parse_sysbench(output: str) -> dict[str, float]:
    """sysbench 1.0's summary: total queries, queries per second, transactions, p95 latency,
    errors (ignored ones) and reconnects."""
    figures: dict[str, float] = {}
    patterns = {
        "queries": r"^\s*queries:\s+(\d+)\s+\(([\d.]+) per sec",
        "transactions": r"^\s*transactions:\s+(\d+)\s+\(([\d.]+) per sec",
        "errors": r"^\s*ignored errors:\s+(\d+)",
        "reconnects": r"^\s*reconnects:\s+(\d+)",
        "p95_ms": r"^\s*95th percentile:\s+([\d.]+)",
    }
    for key, pattern in patterns.items():
        match = re.search(pattern, output, re.MULTILINE)
        if not match:
            continue
        figures[key] = float(match.group(1))
        if key in ("queries", "transactions"):
            figures[key + "_per_s"] = float(match.group(2))
    return figures


def window_queries(output: str, warmup: float) -> float:
    """Queries sysbench reported after ``warmup`` seconds, from its ``--report-interval=1``
    lines (``[ 5s ] thds: 8 tps: ... qps: 1234.00 ...``), each covering one second."""
    total = 0.0
    for match in re.finditer(r"^\[ (\d+)s \] .*? qps: ([\d.]+)", output, re.MULTILINE):
        if int(match.group(1)) > warmup:
            total += float(match.group(2))
    return total


def _common(host: str, port: int, password: str) -> list[str]:
    return [f"--mysql-host={host}", f"--mysql-port={port}", f"--mysql-user={USER}",
            f"--mysql-password={password}", f"--mysql-db={DATABASE}", "--tables=1",
            f"--table-size={TABLE_SIZE}", "--mysql-ssl=off"]


def run_command(label: str, port: int, password: str, threads: int, seconds: int) -> list[str]:
    """sysbench's command line for workload ``label`` (SCRIPTS) through 127.0.0.1:``port``,
    reporting every second (see window_queries)."""
    script, ps_mode = SCRIPTS[label]
    return ["sysbench", script, *_common("127.0.0.1", port, password), f"--db-ps-mode={ps_mode}",
            f"--threads={threads}", f"--time={seconds}", "--report-interval=1", "--rand-type=uniform", "run"]


def prepare(bench: Bench, server: Any) -> None:
    """sysbench's table ``sbtest1``, loaded directly on the server."""
    done = subprocess.run(["sysbench", "oltp_common",
                           *_common(server.host, server.port, bench.password), "prepare"],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise BenchError(f"sysbench prepare failed: {done.stdout[-500:]}{done.stderr[-500:]}")


def run_one(bench: Bench, server: Any, side: str, label: str, threads: int) -> dict[str, Any]:
    """One sysbench run against one side, with a fresh relay or pyproxy for it."""
    args = bench.args
    script, ps_mode = SCRIPTS[label]
    middle: Relay | PyProxy | None = None
    if side == "relay":
        middle = Relay(server)
    elif side == "pyproxy":
        middle = bench.start_proxy(f"sysbench-{script}-{ps_mode}-t{threads}", server,
                                   args.pool_size)
    port = middle.port if middle is not None else server.port
    total = int(args.warmup + args.sysbench_time)
    command = run_command(label, port, bench.password, threads, total)
    progress(f"sysbench {label} t={threads} {side}: {args.warmup:g}s warm-up + "
             f"{args.sysbench_time:g}s")
    root = server.connect()
    try:
        pids = {"proxy": middle.pid if middle is not None else None,
                "mariadbd": server._process.pid}
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        # The counted window starts after the warm-up; sysbench's per-second reports say how
        # many queries fell into it.
        time.sleep(max(0.0, started + args.warmup - time.monotonic()))
        cpu0 = {k: proc_cpu(p) for k, p in pids.items() if p}
        m0 = machine_cpu()
        q0 = server_statements(root)
        try:
            out, err = process.communicate(timeout=total + 120)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        cpu1 = {k: proc_cpu(p) for k, p in pids.items() if p}
        m1 = machine_cpu()
        q1 = server_statements(root)
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        review_text = None
        if isinstance(middle, PyProxy) and process.returncode == 0:
            from bench.pyproxy_log import review  # noqa: PLC0415
            review_text = review(middle, f"sysbench {label} t={threads}", bench.problems)
    finally:
        root.close()
        if middle is not None:
            middle.stop()
    if process.returncode != 0:
        raise BenchError(f"sysbench {label} t={threads} {side} exited with "
                         f"{process.returncode}: {(err or out)[-400:]}")
    figures = parse_sysbench(out)
    windowed = window_queries(out, args.warmup)
    if "queries" not in figures or not windowed:
        raise BenchError(f"sysbench {label} t={threads} {side}: no summary in its output")
    queries = windowed
    # getrusage of children covers sysbench's whole run: divide by all its queries.
    sysbench_cpu = ((children1.ru_utime + children1.ru_stime)
                    - (children0.ru_utime + children0.ru_stime))
    sysbench_us = sysbench_cpu / figures["queries"] * 1e6 if figures["queries"] else None

    def per_query(seconds: float) -> float | None:
        return seconds / queries * 1e6 if queries else None

    result: dict[str, Any] = {
        "qps": queries / args.sysbench_time,
        "tps": figures.get("transactions_per_s"),
        "p95_ms": figures.get("p95_ms"),
        "errors": int(figures.get("errors", 0)),
        "reconnects": int(figures.get("reconnects", 0)),
        "queries": int(queries),
        "proxy_cpu_us_per_query": per_query(cpu1["proxy"] - cpu0["proxy"])
        if "proxy" in cpu0 else None,
        "mariadbd_cpu_us_per_query": per_query(cpu1["mariadbd"] - cpu0["mariadbd"]),
        "sysbench_cpu_us_per_query": sysbench_us,
        # Over the counted window, which the run's last second or so outlasts a little.
        "server_statements_per_query": (q1 - q0 - 1) / queries if queries else None,
        "machine_busy_pct": (m1[0] - m0[0]) / (m1[1] - m0[1]) * 100 if m1[1] > m0[1] else None,
    }
    if review_text is not None:
        result["pyproxy_log"] = review_text
    progress(f"sysbench {label} t={threads} {side}: {result['qps']:.0f} q/s, proxy CPU "
             f"{_fmt(result['proxy_cpu_us_per_query'], '.1f')} us/q")
    return result


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


#: Metric label, result key, format.
METRICS = (
    ("qps", "qps", ".0f"),
    ("p95 latency ms", "p95_ms", ".2f"),
    ("proxy CPU us/query", "proxy_cpu_us_per_query", ".1f"),
    ("mariadbd CPU us/query", "mariadbd_cpu_us_per_query", ".1f"),
    ("sysbench CPU us/query", "sysbench_cpu_us_per_query", ".1f"),
    ("server statements/query", "server_statements_per_query", ".2f"),
    ("machine CPU busy %", "machine_busy_pct", ".0f"),
    ("ignored errors", "errors", "d"),
)


def render(results: dict[str, dict[str, dict[str, Any] | None]]) -> str:
    """The three-way table: one block per script and thread level, a column per side, and
    pyproxy's figure over the relay's."""
    header = ("sysbench", "metric", *SIDES, "pyproxy/relay")
    lines: list[tuple[str, ...]] = []
    for workload, sides in results.items():
        first = True
        for metric, key, spec in METRICS:
            cells = []
            for side in SIDES:
                result = sides.get(side)
                cells.append("FAILED" if result is None else _fmt(result.get(key), spec))
            relay, proxy = (sides.get(s) or {} for s in ("relay", "pyproxy"))
            r, p = relay.get(key), proxy.get(key)
            ratio = f"{p / r:.2f}" if isinstance(r, (int, float)) and isinstance(
                p, (int, float)) and r else "-"
            lines.append((workload if first else "", metric, *cells, ratio))
            first = False
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) if lines else len(header[i])
              for i in range(len(header))]

    def join(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    out = [join(header), "  ".join("-" * w for w in widths)]
    for line in lines:
        if line[0] and len(out) > 2:
            out.append("")
        out.append(join(line))
    return "\n".join(out)


def workload_sysbench(bench: Bench, server: Any) -> None:
    """Every script at every thread level against the three sides, one after another."""
    if shutil.which("sysbench") is None:
        raise BenchError("sysbench is not installed (scripts/install-deps installs it)")
    prepare(bench, server)
    results: dict[str, dict[str, dict[str, Any] | None]] = {}
    for label in bench.args.sysbench_scripts:
        for threads in bench.args.sysbench_threads:
            workload = f"{label} t={threads}"
            results[workload] = {}
            for side in SIDES:
                results[workload][side] = bench.attempt(
                    f"sysbench {workload} {side}", run_one, bench, server, side, label, threads)
    bench.results["sysbench"] = results
    bench.extra_tables.append(render(results))
