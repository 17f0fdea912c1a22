"""The ``select`` workload: point selects in a loop from N concurrent connections, for each
concurrency level of --clients, directly and through a pyproxy of its own.

Figures: queries per second, latency percentiles, CPU per query of pyproxy, mariadbd and the
load generator, how busy the machine was, and the server's statements per query (see
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
from bench.measure import machine_cpu, percentile, proc_cpu, rusage_cpu, server_statements
from bench.processes import (READY_TIMEOUT, collect, merge_errors, merge_latencies,
                             raise_nofile, reap, sleep_until, spawn, split_evenly)
from bench.pyproxy_log import review
from bench.report import fmt_value, progress, select_rows, summarize_errors
from bench.targets import POINT_SQL, PyProxy

if TYPE_CHECKING:
    from bench.harness import Bench


def select_worker(index: int, driver: str, target: dict[str, Any], threads: int, rows: int,
                  results: Any, go: Any, times: Any) -> None:
    """Point selects from ``threads`` connections of this load process until ``times[1]``,
    counted from ``times[0]`` (the end of the warm-up); reports the count, the latencies, the
    errors and this process's CPU time over the counted window."""
    try:
        raise_nofile()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        clients = [Client(driver, target) for _ in range(threads)]
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        results.put(("error", index, f"connect failed: {error_code(exc)} {exc}"))
        return
    results.put(("ready", index, len(clients)))
    if not go.wait(READY_TIMEOUT):
        return
    warm_end, end = times[0], times[1]
    outcomes: list[dict[str, Any] | None] = [None] * threads

    def loop(slot: int, client: Client) -> None:
        rng = random.Random(index * 1000 + slot)
        latencies = array("d")
        errors: collections.Counter[str] = collections.Counter()
        first_error = None
        count = 0
        reconnects = 0
        while True:
            start = time.monotonic()
            if start >= end:
                break
            try:
                client.query(POINT_SQL.format(rng.randint(1, rows)))
            except Exception as exc:  # noqa: BLE001 - counted, the loop goes on
                if start >= warm_end:
                    errors[error_code(exc)] += 1
                first_error = first_error or f"{error_code(exc)} {exc}"
                client.close()
                reconnects += 1
                if reconnects > 100:
                    break
                time.sleep(0.01)
                try:
                    client = Client(driver, target)
                except Exception:  # noqa: BLE001
                    time.sleep(0.1)
                continue
            if start >= warm_end:
                latencies.append(time.monotonic() - start)
                count += 1
        client.close()
        outcomes[slot] = {"count": count, "latencies": latencies, "errors": errors,
                          "first_error": first_error}

    workers = [threading.Thread(target=loop, args=(i, c), daemon=True)
               for i, c in enumerate(clients)]
    for t in workers:
        t.start()
    sleep_until(warm_end)
    cpu0 = rusage_cpu()
    sleep_until(end)
    cpu1 = rusage_cpu()
    for t in workers:
        t.join(max(0.0, end + 60 - time.monotonic()))
    latencies = array("d")
    errors: collections.Counter[str] = collections.Counter()
    count = 0
    first_error = None
    for outcome in outcomes:
        if outcome is None:
            errors["thread did not finish"] += 1
            continue
        count += outcome["count"]
        latencies.extend(outcome["latencies"])
        errors.update(outcome["errors"])
        first_error = first_error or outcome["first_error"]
    results.put(("result", index, {"count": count, "latencies": latencies.tobytes(),
                                   "errors": dict(errors), "first_error": first_error,
                                   "cpu": cpu1 - cpu0}))


def run_select(bench: Bench, server: Any, proxy: PyProxy | None, clients: int) -> dict[str, Any]:
    """One side of one concurrency level: through ``proxy``, or directly when it is None."""
    args = bench.args
    label = f"select c={clients} {'pyproxy' if proxy else 'direct'}"
    nprocs = min(clients, args.procs)
    threads = [n for n in split_evenly(clients, nprocs) if n]
    target = bench.target(server, proxy)
    jobs = [(bench.driver, target, n, args.rows, ()) for n in threads]
    progress(f"{label}: {len(threads)} processes x ~{threads[0]} connections, "
             f"{args.warmup:g}s warm-up + {args.duration:g}s")
    go = bench.ctx.Event()
    times = bench.ctx.Array("d", 2)
    jobs = [(*job[:-1], (go, times)) for job in jobs]
    procs, results = spawn(bench.ctx, select_worker, jobs)
    root = server.connect()
    try:
        collect(procs, results, "ready", READY_TIMEOUT, label)
        now = time.monotonic()
        times[0] = now + args.warmup
        times[1] = now + args.warmup + args.duration
        go.set()
        sleep_until(times[0])
        pids = {"pyproxy": proxy.pid if proxy else None, "mariadbd": server._process.pid}
        cpu0 = {k: proc_cpu(p) for k, p in pids.items() if p}
        m0 = machine_cpu()
        q0 = server_statements(root)
        sleep_until(times[1])
        cpu1 = {k: proc_cpu(p) for k, p in pids.items() if p}
        m1 = machine_cpu()
        q1 = server_statements(root)
        outs = collect(procs, results, "result", 90.0, label)
    finally:
        go.set()
        root.close()
        reap(procs)
    errors, first_error = merge_errors(outs.values())
    count = sum(out["count"] for out in outs.values())
    loadgen_cpu = sum((out["cpu"] for out in outs.values()), 0.0)
    ordered = sorted(merge_latencies(outs.values()))
    per_query = (lambda seconds: seconds / count * 1e6 if count else None)
    busy = (m1[0] - m0[0]) / (m1[1] - m0[1]) * 100 if m1[1] > m0[1] else None
    result = {
        "clients": clients, "processes": len(threads), "queries": count,
        "qps": count / args.duration,
        "p50_ms": percentile(ordered, 50) * 1e3 if ordered else None,
        "p99_ms": percentile(ordered, 99) * 1e3 if ordered else None,
        "errors": dict(errors), "first_error": first_error,
        "pyproxy_cpu_us_per_query": per_query(cpu1["pyproxy"] - cpu0["pyproxy"])
        if proxy else None,
        "pyproxy_cpu_pct": (cpu1["pyproxy"] - cpu0["pyproxy"]) / args.duration * 100
        if proxy else None,
        "mariadbd_cpu_us_per_query": per_query(cpu1["mariadbd"] - cpu0["mariadbd"]),
        "loadgen_cpu_us_per_query": per_query(loadgen_cpu),
        "machine_busy_pct": busy,
        # Minus our own SHOW STATUS; queries that straddle the window edges blur this a bit.
        "server_statements_per_query": (q1 - q0 - 1) / count if count else None,
    }
    result["pyproxy_log"] = review(proxy, label, bench.problems)
    if errors:
        bench.problems.append(f"{label}: {summarize_errors(dict(errors))}; first: "
                              f"{first_error}")
    progress(f"{label}: {result['qps']:.0f} q/s, p99 "
             f"{fmt_value(result['p99_ms'], '.3f')} ms, errors {sum(errors.values())}")
    return result


def _select_through_pyproxy(bench: Bench, server: Any, clients: int) -> dict[str, Any]:
    # A fresh pyproxy per concurrency level: its wait percentiles count every borrow
    # served at once since it started, so a shared one would mix in the earlier levels.
    proxy = bench.start_proxy(f"select-c{clients}", server, bench.args.pool_size)
    try:
        return run_select(bench, server, proxy, clients)
    finally:
        proxy.stop()


def workload_select(bench: Bench, server: Any) -> None:
    """Each --clients level, directly and then through a pyproxy of its own."""
    bench.results["select"] = {}
    for clients in bench.args.clients:
        direct = bench.attempt(f"select c={clients} direct", run_select, bench, server, None,
                               clients)
        through = bench.attempt(f"select c={clients} pyproxy",
                                _select_through_pyproxy, bench, server, clients)
        bench.results["select"][str(clients)] = {"direct": direct, "pyproxy": through}
        bench.rows += select_rows(f"select c={clients}", direct, through)
