"""The ``balanced`` workload: two pyproxy instances behind a real HAProxy that sends PROXY v2
headers (``[proxy] proxy_protocol = true``), sharing one backend budget through a throwaway
Redis (``[budget] redis``), put through the storm; then one instance is killed with SIGKILL
and the survivor's wait for the dead one's share is timed (see bench/run.py's docstring).

pyproxy only: the same storm directly is the ``storm`` workload's direct side. HAProxy has a
frontend balancing over both instances, for the storm, and one per instance, so that logins
reach each of them on purpose: to see that it is ready, and to give each its share in the
kill phase.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from bench.clients import Client, error_code
from bench.errors import BenchError
from bench.measure import ThreadsConnectedMonitor, child_pids
from bench.pyproxy_log import review
from bench.report import balanced_rows, progress, summarize_errors
from bench.targets import (POINT_SQL, USER, PyProxy, start_balancer, start_redis, stop_helper,
                           stop_server)
from bench.workloads.storm import storm_figures
from pyproxy.config import BudgetConfig

if TYPE_CHECKING:
    from bench.harness import Bench

#: The instances, by the name of their HAProxy frontend; the first is the one killed.
INSTANCES = ("a", "b")
#: The frontend that balances round-robin over both.
BOTH = "both"
#: Seconds between two looks at Redis's lease set while the survivor waits.
POLL = 0.02


def lease_pid(member: str) -> int:
    """The process id in a lease's member (``host:pid:worker:random:serial``, see
    pyproxy.redis_budget): whose lease it is."""
    return int(member.rsplit(":", 4)[1])


def budget_key(server: Any) -> str:
    """The sorted set of the bench user's leases on ``server`` (pyproxy's default prefix)."""
    return f"{BudgetConfig().prefix}:budget:{USER}:{server.host}:{server.port}"


def lease_members(client: Any, key: str) -> set[str]:
    """The members of the lease set ``key`` now; Redis failing is a BenchError."""
    import redis  # noqa: PLC0415 - start_redis has checked that it imports

    try:
        return {m.decode() for m in client.zrange(key, 0, -1)}
    except redis.exceptions.RedisError as exc:
        raise BenchError(f"Redis at {client}: {exc}") from None


class Holder:
    """A client that logs in through one HAProxy frontend, begins a transaction and runs a
    point select, then keeps the transaction open until ``release`` is set: it holds one
    backend connection, and so one lease, of the instance behind that frontend."""

    def __init__(self, driver: str, target: dict[str, Any], timeout: float,
                 release: threading.Event) -> None:
        self.driver = driver
        self.target = target
        self.timeout = timeout
        self.release = release
        # When the select came back (monotonic clock); None while it waits.
        self.served_at: float | None = None
        self.code: str | None = None   # of the error that ended it, if one did
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client = None
        try:
            client = Client(self.driver, self.target, timeout=self.timeout)
            client.execute("BEGIN")
            client.query(POINT_SQL.format(1))
            self.served_at = time.monotonic()
            if self.release.wait(self.timeout):
                client.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - counted
            self.code = error_code(exc)
            self.error = f"{self.code} {exc}"
        finally:
            if client is not None:
                client.close()


def wait_until(condition: Any, timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; ``what`` did not happen in ``timeout`` seconds is a
    BenchError (every wait of the workload is bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise BenchError(f"{what} within {timeout:g}s")
        time.sleep(POLL)


def run_balanced_storm(bench: Bench, server: Any, proxies: list[PyProxy],
                       balancer: Any) -> dict[str, Any]:
    """The storm through the frontend that balances over both instances."""
    label = "balanced storm"
    target = {**bench.target(server, None), "port": balancer.ports[BOTH]}
    result = storm_figures(bench, server, target, label,
                           {"pyproxy": [p.pid for p in proxies],
                            "mariadbd": [server._process.pid]}, max_used=True)
    result["instances"] = len(proxies)
    result["budget"] = bench.args.pool_size
    result["pyproxy_logs"] = {name: review(proxy, f"{label} ({name})", bench.problems)
                              for name, proxy in zip(INSTANCES, proxies)}
    if result["errors"]:
        bench.problems.append(f"{label}: {summarize_errors(result['errors'])}; first: "
                              f"{result['first_error']}")
    return result


def run_lease_return(bench: Bench, server: Any, proxies: list[PyProxy], balancer: Any,
                     redis_server: Any) -> dict[str, Any]:
    """Half the budget held in transactions on the first instance, the whole budget asked
    for on the second (which gets the other half and waits for the rest); then ``kill -9``
    of the first, and when the second could use its share."""
    args = bench.args
    label = "balanced kill"
    doomed, survivor = proxies
    budget = args.pool_size
    held = budget // 2
    lease = args.lease_seconds or BudgetConfig().lease_seconds
    # A lease outlives its instance by at most lease_seconds; the rest is room for a slow box.
    patience = 3 * lease + 30
    release = threading.Event()
    redis_client = redis_server.client()
    key = budget_key(server)

    def holders(frontend: str, count: int) -> list[Holder]:
        target = {**bench.target(server, None), "port": balancer.ports[frontend]}
        return [Holder(bench.driver, target, patience, release) for _ in range(count)]

    def served(group: list[Holder]) -> int:
        failed = [h.error for h in group if h.error]
        if failed:
            raise BenchError(f"{label}: a client failed before the kill: {failed[0]}")
        return sum(h.served_at is not None for h in group)

    progress(f"{label}: {held} of a budget of {budget} held in transactions on instance a, "
             f"{budget} asked for on instance b")
    doomed_clients: list[Holder] = []
    survivor_clients: list[Holder] = []
    try:
        doomed_clients = holders(INSTANCES[0], held)
        wait_until(lambda: served(doomed_clients) == held, patience,
                   f"{label}: instance a did not serve its {held} clients")
        survivor_clients = holders(INSTANCES[1], budget)
        # Instance a gives up its idle connections once it sees b was refused a lease.
        wait_until(lambda: served(survivor_clients) == budget - held, patience,
                   f"{label}: instance b did not get the other {budget - held} connections")
        time.sleep(0.5)
        before = served(survivor_clients)
        if before != budget - held:
            bench.problems.append(f"{label}: instance b served {before} clients while a held "
                                  f"{held}, over the budget of {budget}")
        dead = {doomed.pid, *child_pids(doomed.pid)}
        members = lease_members(redis_client, key)
        if not members:
            raise BenchError(f"{label}: no leases in Redis under {key}")
        dead_members = {m for m in members if lease_pid(m) in dead}
        with ThreadsConnectedMonitor(server, cap=patience + 10) as monitor:
            wait_until(lambda: monitor.samples > 0 or monitor.error is not None, 10,
                       f"{label}: the Threads_connected poller took no sample")
            progress(f"{label}: kill -9 of instance a (pid {doomed.pid}), holding "
                     f"{len(dead_members)} of {len(members)} leases")
            killed_at = time.monotonic()
            os.killpg(doomed.pid, signal.SIGKILL)
            doomed.process.wait(5)
            gone_at = None
            deadline = killed_at + patience
            while time.monotonic() < deadline:
                if gone_at is None and not lease_members(redis_client, key) & dead_members:
                    gone_at = time.monotonic()
                if gone_at is not None and all(h.served_at or h.error for h in survivor_clients):
                    break
                time.sleep(POLL)
        leases_after = len(lease_members(redis_client, key))
    finally:
        release.set()
        # Released clients commit and leave at once; one still waiting for a connection
        # gives up at its timeout, in its daemon thread.
        end = time.monotonic() + 15
        for holder in (*doomed_clients, *survivor_clients):
            holder.thread.join(max(0.0, end - time.monotonic()))
        redis_client.close()
    waited = sorted(h.served_at - killed_at for h in survivor_clients
                    if h.served_at is not None and h.served_at > killed_at)
    errors = collections.Counter(h.code for h in survivor_clients if h.code)
    first_error = next((h.error for h in survivor_clients if h.error), None)
    result = {
        "budget": budget, "lease_seconds": lease,
        "dead_share": len(dead_members), "survivor_share": len(members) - len(dead_members),
        "waiting": held, "served_after_kill": len(waited),
        "first_extra_ms": waited[0] * 1e3 if waited else None,
        "whole_budget_ms": waited[-1] * 1e3 if len(waited) == held else None,
        "leases_gone_ms": (gone_at - killed_at) * 1e3 if gone_at is not None else None,
        "leases_after": leases_after,
        "errors": dict(errors), "first_error": first_error,
        "max_server_connections": monitor.max, "monitor_error": monitor.error,
    }
    result["pyproxy_log"] = review(survivor, f"{label} (b)", bench.problems)
    if monitor.error:
        bench.problems.append(f"{label}: Threads_connected poller failed: {monitor.error}")
    if errors:
        bench.problems.append(f"{label}: instance b's clients: {summarize_errors(dict(errors))}"
                              f"; first: {first_error}")
    if len(waited) < held:
        bench.problems.append(f"{label}: only {len(waited)} of instance b's {held} waiting "
                              f"clients were served within {patience:g}s of the kill")
    progress(f"{label}: b used a's share after "
             f"{result['first_extra_ms'] or float('nan'):.0f} ms, all of it after "
             f"{result['whole_budget_ms'] or float('nan'):.0f} ms; a's leases gone from "
             f"Redis after {result['leases_gone_ms'] or float('nan'):.0f} ms")
    return result


def workload_balanced(bench: Bench) -> None:
    """Redis, two pyproxy instances sharing the budget through it and HAProxy in front of
    them, all on a server of their own with few slots; the storm, then the kill."""
    args = bench.args
    server = bench.start_server(args.storm_server_max_connections)
    proxies: list[PyProxy] = []
    helpers: list[Any] = []
    storm = kill = None
    try:
        redis_server = start_redis(bench.log_dir / "balanced-redis")
        helpers.append(redis_server)
        budget: dict[str, Any] = {"redis": redis_server.url}
        if args.lease_seconds is not None:
            budget["lease_seconds"] = args.lease_seconds
        sections = {"proxy": {"proxy_protocol": True}, "budget": budget}
        for name in INSTANCES:
            proxies.append(bench.start_proxy(f"balanced-{name}", server, args.pool_size,
                                             sections))
        balancer = start_balancer(bench.log_dir / "balanced-haproxy", {
            BOTH: ([p.port for p in proxies], "send-proxy-v2"),
            **{name: ([p.port], "send-proxy-v2") for name, p in zip(INSTANCES, proxies)}})
        helpers.append(balancer)
        for name, proxy in zip(INSTANCES, proxies):
            # Also its first statement, which reads the user's catalog of stored code over
            # a side connection the budget does not count: not during the storm.
            proxy.wait_ready(balancer.ports[name])
        storm = bench.attempt("balanced storm", run_balanced_storm, bench, server, proxies,
                              balancer)
        kill = bench.attempt("balanced kill", run_lease_return, bench, server, proxies,
                             balancer, redis_server)
    finally:
        for proxy in proxies:
            proxy.stop()
        for helper in helpers:
            stop_helper(helper)
        stop_server(server)
    bench.results["balanced"] = {"storm": storm, "kill": kill}
    bench.rows += balanced_rows("balanced", storm, kill)
