"""The ``storm`` workload: many short-lived clients, each connecting, running one point select
and disconnecting, against a server with few connection slots, directly and through pyproxy.

Figures: successful cycles per second, cycle-time percentiles, errors by code (1040, Too many
connections, directly), the most connections the server held, and CPU per cycle (see
bench/run.py's docstring).
"""

from __future__ import annotations

import collections
import random
import signal
import threading
import time
from array import array
from typing import TYPE_CHECKING, Any

from bench.clients import Client, error_code
from bench.measure import ThreadsConnectedMonitor, percentile, proc_cpu
from bench.processes import (READY_TIMEOUT, collect, merge_errors, merge_latencies, reap,
                             sleep_until, spawn, split_evenly)
from bench.pyproxy_log import review
from bench.report import progress, storm_rows, summarize_errors
from bench.targets import POINT_SQL, PyProxy, stop_server

if TYPE_CHECKING:
    from bench.harness import Bench


def storm_worker(index: int, driver: str, target: dict[str, Any], cycles: list[int], rows: int,
                 deadline_after: float, results: Any, go: Any, times: Any) -> None:
    """One thread per item of ``cycles``, each connecting, running one point select and
    disconnecting that many times from ``times[0]`` on, none begun after the time cap; reports
    the successful cycles' times, the errors and when the last thread finished."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if driver == "mysqlclient":
            import MySQLdb  # noqa: F401, PLC0415 - import before the clock starts
        else:
            import pymysql  # noqa: F401, PLC0415
    except Exception as exc:  # noqa: BLE001
        results.put(("error", index, f"{type(exc).__name__}: {exc}"))
        return
    results.put(("ready", index, len(cycles)))
    if not go.wait(READY_TIMEOUT):
        return
    start_at = times[0]
    deadline = start_at + deadline_after
    outcomes: list[dict[str, Any] | None] = [None] * len(cycles)

    def loop(slot: int, n: int) -> None:
        rng = random.Random(index * 1000 + slot)
        latencies = array("d")
        errors: collections.Counter[str] = collections.Counter()
        first_error = None
        for _ in range(n):
            if time.monotonic() >= deadline:
                errors["not run (time cap)"] += 1
                continue
            start = time.monotonic()
            client = None
            try:
                client = Client(driver, target, timeout=30.0)
                client.query(POINT_SQL.format(rng.randint(1, rows)))
            except Exception as exc:  # noqa: BLE001 - counted
                errors[error_code(exc)] += 1
                first_error = first_error or f"{error_code(exc)} {exc}"
                if client is not None:
                    client.close()
                continue
            client.close()
            latencies.append(time.monotonic() - start)
        outcomes[slot] = {"latencies": latencies, "errors": errors, "first_error": first_error,
                          "end": time.monotonic()}

    sleep_until(start_at)
    workers = [threading.Thread(target=loop, args=(i, n), daemon=True)
               for i, n in enumerate(cycles)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(max(0.0, deadline + 60 - time.monotonic()))
    latencies = array("d")
    errors: collections.Counter[str] = collections.Counter()
    first_error = None
    end = start_at
    for slot, outcome in enumerate(outcomes):
        if outcome is None:
            errors["thread hung"] += cycles[slot]
            end = max(end, time.monotonic())
            continue
        latencies.extend(outcome["latencies"])
        errors.update(outcome["errors"])
        first_error = first_error or outcome["first_error"]
        end = max(end, outcome["end"])
    results.put(("result", index, {"latencies": latencies.tobytes(), "errors": dict(errors),
                                   "first_error": first_error, "end": end}))


def storm_figures(bench: Bench, server: Any, target: dict[str, Any], label: str,
                  pids: dict[str, list[int]], max_used: bool = False) -> dict[str, Any]:
    """The storm against ``target`` (a server, a pyproxy, a balancer in front of pyproxies):
    its figures, with ``<name>_cpu_us_per_cycle`` for each group of processes in ``pids``
    (None when the group is empty); with ``max_used``, also the server's
    Max_used_connections right after it (a peak since the server started, so only for a
    server started for this storm)."""
    args = bench.args
    concurrency = min(args.storm_concurrency, args.storm_clients)
    nprocs = min(args.procs, concurrency)
    per_proc = [n for n in split_evenly(concurrency, nprocs) if n]
    per_thread = split_evenly(args.storm_clients, concurrency)
    jobs, offset = [], 0
    for n in per_proc:
        jobs.append((bench.driver, target, per_thread[offset:offset + n],
                     args.rows, args.storm_time_cap, ()))
        offset += n
    progress(f"{label}: {args.storm_clients} clients, {concurrency} at a time, server "
             f"max_connections={server.max_connections}")
    go = bench.ctx.Event()
    times = bench.ctx.Array("d", 1)
    jobs = [(*job[:-1], (go, times)) for job in jobs]
    procs, results = spawn(bench.ctx, storm_worker, jobs)

    def cpu() -> dict[str, float]:
        return {name: sum(proc_cpu(pid) for pid in group) for name, group in pids.items()}

    try:
        collect(procs, results, "ready", READY_TIMEOUT, label)
        with ThreadsConnectedMonitor(server, cap=args.storm_time_cap + 120) as monitor:
            baseline = monitor.sample()
            times[0] = time.monotonic() + 0.2
            cpu0 = cpu()
            go.set()
            outs = collect(procs, results, "result", args.storm_time_cap + 90, label)
            cpu1 = cpu()
            used = monitor.max_used() if max_used else None
    finally:
        go.set()
        reap(procs)
    errors, first_error = merge_errors(outs.values())
    end = max([times[0], *(out["end"] for out in outs.values())])
    wall = end - times[0]
    ordered = sorted(merge_latencies(outs.values()))
    ok = len(ordered)
    result = {
        "clients": args.storm_clients, "concurrency": concurrency,
        "server_max_connections": server.max_connections,
        "succeeded": ok, "errors": dict(errors), "first_error": first_error,
        "wall_s": wall, "cycles_per_s": ok / wall if wall > 0 else None,
        "p50_ms": percentile(ordered, 50) * 1e3 if ordered else None,
        "p99_ms": percentile(ordered, 99) * 1e3 if ordered else None,
        "max_ms": ordered[-1] * 1e3 if ordered else None,
        "max_server_connections": monitor.max,
        "server_connections_before": baseline,
        "monitor_samples": monitor.samples, "monitor_error": monitor.error,
        **{f"{name}_cpu_us_per_cycle": (cpu1[name] - cpu0[name]) / ok * 1e6
           if ok and pids[name] else None for name in pids},
    }
    if max_used:
        result["server_max_used_connections"] = used
    if monitor.error:
        bench.problems.append(f"{label}: Threads_connected poller failed: {monitor.error}")
    progress(f"{label}: {ok} ok, errors {summarize_errors(dict(errors))}, "
             f"{wall:.2f}s, max server conns {monitor.max}")
    return result


def run_storm(bench: Bench, server: Any, proxy: PyProxy | None) -> dict[str, Any]:
    """One side of the storm: through ``proxy``, or directly when it is None."""
    label = f"storm {'pyproxy' if proxy else 'direct'}"
    result = storm_figures(bench, server, bench.target(server, proxy), label,
                           {"pyproxy": [proxy.pid] if proxy else [],
                            "mariadbd": [server._process.pid]})
    result["pool_size"] = bench.args.pool_size if proxy else None
    result["pyproxy_log"] = review(proxy, label, bench.problems)
    if proxy and result["errors"]:
        bench.problems.append(f"{label}: {summarize_errors(result['errors'])}; first: "
                              f"{result['first_error']}")
    return result


def workload_storm(bench: Bench) -> None:
    """The storm directly, then through pyproxy, on a server of its own with few slots."""
    server = bench.start_server(bench.args.storm_server_max_connections)
    proxy = None
    try:
        direct = bench.attempt("storm direct", run_storm, bench, server, None)
        time.sleep(1.0)  # let the server reap the direct connections
        # Started only now, so its pool holds none of the server's slots during the
        # direct run.
        proxy = bench.start_proxy("storm", server, bench.args.pool_size)
        through = bench.attempt("storm pyproxy", run_storm, bench, server, proxy)
    finally:
        if proxy is not None:
            proxy.stop()
        stop_server(server)
    bench.results["storm"] = {"direct": direct, "pyproxy": through}
    bench.rows += storm_rows("storm", direct, through)
