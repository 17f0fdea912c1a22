"""The ``idle`` workload: how much memory pyproxy needs per logged-in client that sits idle, and
how many backend connections it holds for them meanwhile (pyproxy only: there is no direct
baseline; see bench/run.py's docstring).
"""

from __future__ import annotations

import collections
import signal
import time
from typing import TYPE_CHECKING, Any

from bench.clients import Client, error_code
from bench.measure import ThreadsConnectedMonitor, proc_rss
from bench.processes import collect, merge_errors, raise_nofile, reap, spawn, split_evenly
from bench.pyproxy_log import review
from bench.report import fmt_value, idle_rows, progress, summarize_errors
from bench.targets import POINT_SQL

if TYPE_CHECKING:
    from bench.harness import Bench


def idle_worker(index: int, driver: str, target: dict[str, Any], n: int, results: Any,
                release: Any, hold_timeout: float) -> None:
    """Log ``n`` connections in and hold them idle until ``release`` is set (at most
    ``hold_timeout`` seconds); reports how many opened once they are all tried."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    raise_nofile()
    clients: list[Client] = []
    errors: collections.Counter[str] = collections.Counter()
    first_error = None
    for _ in range(n):
        try:
            clients.append(Client(driver, target))
        except Exception as exc:  # noqa: BLE001
            errors[error_code(exc)] += 1
            first_error = first_error or f"{error_code(exc)} {exc}"
    results.put(("ready", index, {"opened": len(clients), "errors": dict(errors),
                                  "first_error": first_error}))
    release.wait(hold_timeout)
    for client in clients:
        client.close()
    results.put(("result", index, {}))


def workload_idle(bench: Bench, server: Any) -> None:
    """pyproxy's memory before, with and after --idle-clients idle logins, and the backend
    connections it holds for them."""
    args = bench.args
    proxy = bench.start_proxy("idle", server, args.pool_size)
    label = "idle pyproxy"
    try:
        # Warm up the code paths (login, a query) so they are not counted as per-client cost.
        warm = [Client(bench.driver, bench.target(server, proxy)) for _ in range(4)]
        for client in warm:
            client.query(POINT_SQL.format(1))
            client.close()
        time.sleep(0.5)
        rss_before = proc_rss(proxy.pid)
        nprocs = max(1, min(args.procs, args.idle_clients))
        counts = [n for n in split_evenly(args.idle_clients, nprocs) if n]
        progress(f"{label}: opening {args.idle_clients} idle logged-in connections from "
                 f"{len(counts)} processes")
        release = bench.ctx.Event()
        jobs = [(bench.driver, bench.target(server, proxy), n, (release, 600.0))
                for n in counts]
        procs, results = spawn(bench.ctx, idle_worker, jobs)
        try:
            ready = collect(procs, results, "ready", 300.0, label)
            time.sleep(1.0)
            rss_after = proc_rss(proxy.pid)
            with ThreadsConnectedMonitor(server) as monitor:
                backend_conns = monitor.sample()
            release.set()
            collect(procs, results, "result", 60.0, label)
        finally:
            release.set()
            reap(procs)
        time.sleep(1.0)
        rss_closed = proc_rss(proxy.pid) if proxy.alive() else None
        opened = sum(r["opened"] for r in ready.values())
        errors, first_error = merge_errors(ready.values())
        result = {
            "clients": args.idle_clients, "opened": opened, "errors": dict(errors),
            "first_error": first_error, "rss_before": rss_before, "rss_after": rss_after,
            "rss_after_close": rss_closed,
            "bytes_per_idle_connection": (rss_after - rss_before) / opened if opened else None,
            "server_connections": backend_conns,
        }
        result["pyproxy_log"] = review(proxy, label, bench.problems)
    finally:
        proxy.stop()
    if errors:
        bench.problems.append(f"{label}: {summarize_errors(dict(errors))} logins failed; "
                              f"first: {first_error}")
    bench.results["idle"] = {"pyproxy": result}
    bench.rows += idle_rows(f"idle {args.idle_clients} clients", result)
    progress(f"{label}: {fmt_value(result['bytes_per_idle_connection'], '.0f')} "
             "bytes/idle connection")
