"""The fault workloads, ``failover`` and ``restart``: clients running small write transactions
through a simulated failover (the writer turned read-only, the other server writable) or a
kill -9 and restart of the only server, directly and through pyproxy.

Figures: transactions committed, client errors and reconnects, how soon the first and the last
client were writing again, how long the fault took, and whether the balances still add up (see
bench/run.py's docstring).
"""

from __future__ import annotations

import collections
import random
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from bench.clients import Client, error_code
from bench.measure import recovery_figures
from bench.processes import (READY_TIMEOUT, collect, merge_errors, reap, sleep_until, spawn,
                             split_evenly)
from bench.pyproxy_log import count_log_events
from bench.report import FAULTS, fault_rows, fmt_value, progress, summarize_errors
from bench.targets import DATABASE, USER, PyProxy

if TYPE_CHECKING:
    from bench.harness import Bench


#: The fault workloads: writing clients, the balance every account starts with, the pause a
#: client makes after each commit (so the load does not saturate a small machine), and
#: pyproxy's [health] interval.
FAULT_CLIENTS = 16
FAULT_BALANCE = 1000
FAULT_PAUSE = 0.01
#: How long a client of the fault workloads waits after an error before it tries again.
RETRY_PAUSE = 0.05
FAULT_HEALTH_INTERVAL = 1.0


#: Errors after which a writing client opens a new connection instead of rolling back: the
#: connection is gone (2006, 2013, 2055; "0" is the driver's own error on a closed
#: connection). Errors that are not MySQL errors at all count as a lost connection too.
LOST_CONNECTION = frozenset(("0", "2006", "2013", "2055"))

#: The server is read-only (a demoted writer): a direct client must reconnect to reach the
#: new writer, as applications on Aurora are told to do; through pyproxy the same
#: connection reaches the new writer once pyproxy has seen the failover.
ER_OPTION_PREVENTS_STATEMENT = "1290"


def reconnects_after(code: str, direct: bool) -> bool:
    """Whether a writing client drops its connection after an error with this
    :func:`bench.clients.error_code` (else it rolls back and goes on with the same
    connection)."""
    if direct and code == ER_OPTION_PREVENTS_STATEMENT:
        return True
    return code in LOST_CONNECTION or not code.isdigit()


def is_autocommit_writer(index: int, slot: int) -> bool:
    """Every other client of the fault workloads writes in autocommit (one statement, no
    transaction) instead of in transactions, counting from the first client of each process
    alternately, so that any number of clients has both kinds."""
    return (index + slot) % 2 == 1


def move_statement(low: int, high: int, amount: int) -> str:
    """One autocommit statement that moves ``amount`` from account ``low`` to ``high``: the
    same change as a transfer transaction, made atomic by the server itself."""
    return (f"UPDATE accounts SET balance = balance + IF(id = {low}, -{amount}, {amount}) "
            f"WHERE id IN ({low}, {high})")


def write_worker(index: int, driver: str, target: dict[str, Any], direct: bool, threads: int,
                 accounts: int, pause: float, results: Any, go: Any, times: Any,
                 endpoint: Any) -> None:
    """Clients running small writes (move one unit between two accounts) from ``times[0]``
    to ``times[2]``, through a fault the parent causes meanwhile: transactions, or, for every
    other client (:func:`is_autocommit_writer`), one autocommit statement.

    Each client connects to ``target`` at the port in ``endpoint`` (a shared value: the
    parent flips it for direct clients, like a cluster endpoint; it is pyproxy's port
    otherwise), and reads it again whenever it reconnects. After an error it waits
    ``RETRY_PAUSE``, then rolls back or reconnects (see :func:`reconnects_after`; ``direct``
    says which side it is on), retrying as often; every failed statement and
    connect is counted. ``times[1]`` is set by the parent once the fault has happened: the
    first transaction begun after it that commits tells when the client was writing again.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    results.put(("ready", index, threads))
    if not go.wait(READY_TIMEOUT):
        return
    start_at, end = times[0], times[2]
    outcomes: list[dict[str, Any] | None] = [None] * threads

    def connect(errors: collections.Counter[str]) -> Client | None:
        while time.monotonic() < end:
            try:
                return Client(driver, {**target, "port": endpoint.value}, timeout=10.0)
            except Exception as exc:  # noqa: BLE001 - counted, then retried
                errors[error_code(exc)] += 1
                time.sleep(RETRY_PAUSE)
        return None

    def loop(slot: int) -> None:
        rng = random.Random(index * 1000 + slot)
        autocommit = is_autocommit_writer(index, slot)
        errors: collections.Counter[str] = collections.Counter()
        first_error = None
        committed = reconnects = 0
        first_after = None
        client = connect(errors)
        while client is not None and time.monotonic() < end:
            low, high = sorted(rng.sample(range(1, accounts + 1), 2))
            amount = rng.choice((-1, 1))
            began = time.monotonic()
            try:
                if autocommit:
                    client.execute(move_statement(low, high, amount))
                else:
                    client.execute("BEGIN")
                    # In id order, so two clients never wait for each other in opposite
                    # orders.
                    client.execute(f"UPDATE accounts SET balance = balance - {amount} "
                                   f"WHERE id = {low}")
                    client.execute(f"UPDATE accounts SET balance = balance + {amount} "
                                   f"WHERE id = {high}")
                    client.execute("COMMIT")
            except Exception as exc:  # noqa: BLE001 - counted, the loop goes on
                code = error_code(exc)
                errors[code] += 1
                first_error = first_error or f"{code} {exc}"
                time.sleep(RETRY_PAUSE)
                if autocommit and not reconnects_after(code, direct):
                    continue  # nothing to roll back
                if not reconnects_after(code, direct):
                    try:
                        client.execute("ROLLBACK")
                        continue
                    except Exception as again:  # noqa: BLE001 - the connection is unusable
                        errors[error_code(again)] += 1
                client.close()
                client = connect(errors)
                reconnects += 1
                continue
            committed += 1
            fault = times[1]
            if first_after is None and fault and began >= fault:
                first_after = time.monotonic()
            if pause:
                time.sleep(pause)
        if client is not None:
            client.close()
        outcomes[slot] = {"committed": committed, "reconnects": reconnects,
                          "first_after": first_after, "errors": errors,
                          "first_error": first_error, "autocommit": autocommit}

    sleep_until(start_at)
    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(max(0.0, end + 60 - time.monotonic()))
    finished = [outcome for outcome in outcomes if outcome is not None]
    errors, first_error = merge_errors(finished)
    if len(finished) < threads:
        errors["thread hung"] += threads - len(finished)
    by_kind = {kind: merge_errors(o for o in finished if o["autocommit"] == (kind == "autocommit"))[0]
               for kind in ("autocommit", "transactions")}
    clients = [{key: outcome[key] for key in ("committed", "reconnects", "first_after", "autocommit")}
               for outcome in finished]
    results.put(("result", index, {"clients": clients, "errors": dict(errors),
                                   "first_error": first_error,
                                   "errors_autocommit": dict(by_kind["autocommit"]),
                                   "errors_transactions": dict(by_kind["transactions"])}))


def reset_group(bench: Bench, group: Any) -> None:
    """Both servers running, the first writable and the second read-only, each with the
    same fresh accounts table and a user limited to its database (``read_only`` does not
    stop a user with ALL PRIVILEGES ON *.*)."""
    group.reset()
    group.create_user(USER, bench.password, database=DATABASE)
    rows = ", ".join(f"({i}, {FAULT_BALANCE})" for i in range(1, bench.args.accounts + 1))
    for index in range(len(group.servers)):
        group.admin(index, f"DROP TABLE IF EXISTS {DATABASE}.accounts",
                    f"CREATE TABLE {DATABASE}.accounts (id INT PRIMARY KEY, "
                    "balance INT NOT NULL) ENGINE=InnoDB",
                    f"INSERT INTO {DATABASE}.accounts VALUES {rows}")
    conn = group[0].connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            bench.mariadb_version = cur.fetchone()[0]
    finally:
        conn.close()


def sums_intact(bench: Bench, group: Any) -> str:
    """'yes' when every running server's balances still add up to what they started with."""
    expected = bench.args.accounts * FAULT_BALANCE
    for server in group.servers:
        conn = server.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT SUM(balance) FROM {DATABASE}.accounts")
                if int(cur.fetchone()[0]) != expected:
                    return "NO"
        finally:
            conn.close()
    return "yes"


def cause_fault(bench: Bench, kind: str, group: Any, proxy: PyProxy | None, times: Any,
                endpoint: Any) -> tuple[float, float]:
    """Fail over (server 0 read-only, then server 1 writable, then the direct clients'
    endpoint to server 1) or kill -9 server 0 and start it again. Sets ``times[1]`` once
    the old server can no longer commit. Returns the moment recovery is measured from (the
    old writer read-only; the kill) and how long the fault itself took in ms (turning
    read-only, which waits for running writes; until the server accepted logins again)."""
    if kind == "failover":
        flip = group.fail_over(0, 1)
        times[1] = flip.demoted
        if proxy is None:
            delay = bench.args.endpoint_delay
            if delay:
                timer = threading.Timer(delay, setattr, (endpoint, "value", group[1].port))
                timer.daemon = True
                timer.start()
            else:
                endpoint.value = group[1].port
        return flip.demoted, (flip.demoted - flip.began) * 1e3
    group[0].kill()
    killed = times[1] = time.monotonic()
    group[0].start()
    return killed, (time.monotonic() - killed) * 1e3


def run_fault(bench: Bench, kind: str, group: Any, proxy: PyProxy | None) -> dict[str, Any]:
    """One side of a fault workload: clients writing, the fault at a fixed moment, and how
    the clients fared (see bench/run.py's docstring)."""
    args = bench.args
    label = f"{kind} {'pyproxy' if proxy else 'direct'}"
    nprocs = min(args.failover_clients, args.procs)
    threads = [n for n in split_evenly(args.failover_clients, nprocs) if n]
    target = bench.target(group[0], proxy)
    endpoint = bench.ctx.Value("i", target["port"])
    go = bench.ctx.Event()
    times = bench.ctx.Array("d", 3)
    jobs = [(bench.driver, target, proxy is None, n, args.accounts, FAULT_PAUSE,
             (go, times, endpoint)) for n in threads]
    progress(f"{label}: {args.failover_clients} writing clients, the {kind} after "
             f"{args.failover_before:g}s, then {args.failover_after:g}s more")
    procs, results = spawn(bench.ctx, write_worker, jobs)
    try:
        collect(procs, results, "ready", READY_TIMEOUT, label)
        times[0] = time.monotonic() + 0.2
        fault_at = times[0] + args.failover_before
        times[2] = fault_at + args.failover_after
        go.set()
        sleep_until(fault_at)
        event_at, fault_ms = cause_fault(bench, kind, group, proxy, times, endpoint)
        outs = collect(procs, results, "result", args.failover_after + 90, label)
    finally:
        go.set()
        reap(procs)
    clients = [client for out in outs.values() for client in out["clients"]]
    errors, first_error = merge_errors(outs.values())
    result = {
        "committed": sum(client["committed"] for client in clients),
        "autocommit_clients": sum(1 for client in clients if client["autocommit"]),
        "errors_autocommit": dict(sum((collections.Counter(out["errors_autocommit"])
                                       for out in outs.values()), collections.Counter())),
        "errors_transactions": dict(sum((collections.Counter(out["errors_transactions"])
                                         for out in outs.values()), collections.Counter())),
        "reconnects": sum(client["reconnects"] for client in clients),
        "errors": dict(errors), "first_error": first_error, "fault_ms": fault_ms,
        **recovery_figures(event_at, [client["first_after"] for client in clients]),
        "sums_intact": sums_intact(bench, group),
    }
    if proxy is not None:
        counts, odd = count_log_events(proxy.new_log_lines())
        result["pyproxy_events"] = dict(counts)
        bad = {k: v for k, v in counts.items() if k.startswith(("error:", "critical:"))}
        if bad or odd:
            bench.problems.append(f"{label}: pyproxy logged {bad or ''} "
                                  f"{odd[0][:300] if odd else ''}".rstrip())
    if result["recovered"] < args.failover_clients:
        bench.problems.append(f"{label}: {args.failover_clients - result['recovered']} "
                              f"clients were not writing again by the end")
    if result["sums_intact"] != "yes":
        bench.problems.append(f"{label}: the balances no longer add up")
    progress(f"{label}: {result['committed']} committed, errors "
             f"{summarize_errors(dict(errors))} (autocommit writers "
             f"{summarize_errors(result['errors_autocommit'])}), first write "
             f"{fmt_value(result['first_ms'], '.0f')} ms after the {kind}, all clients "
             f"after {fmt_value(result['max_ms'], '.0f')} ms")
    return result


def _fault_through_pyproxy(bench: Bench, kind: str, group: Any) -> dict[str, Any]:
    sections: dict[str, dict[str, Any]] = {"health": {"interval": FAULT_HEALTH_INTERVAL}}
    if kind == "failover":
        sections["backend"] = group.backend(["writer", "auto"])
    proxy = bench.start_proxy(kind, group[0], bench.args.pool_size, sections)
    try:
        return run_fault(bench, kind, group, proxy)
    finally:
        proxy.stop()


def workload_fault(bench: Bench, kind: str, group: Any) -> None:
    """``failover`` or ``restart``, directly and then through pyproxy, on fresh tables."""
    reset_group(bench, group)
    direct = bench.attempt(f"{kind} direct", run_fault, bench, kind, group, None)
    reset_group(bench, group)
    through = bench.attempt(f"{kind} pyproxy", _fault_through_pyproxy, bench, kind, group)
    bench.results[kind] = {"direct": direct, "pyproxy": through}
    bench.rows += fault_rows(kind, *FAULTS[kind], direct, through)
