#!/usr/bin/env python3
"""What TLS costs through pyproxy: login time, and CPU and latency per query.

Running it
==========

From the repository root, with the MariaDB server binaries and the test extras installed
(``scripts/install-deps``; ``trustme`` makes the certificates)::

    python3 bench/tls.py              # about a minute
    python3 bench/tls.py --quick      # fewer logins, 3 s per query measurement

It starts a throwaway MariaDB with its own certificates (``SandboxServer`` with
``ssl_cert``/``ssl_key``/``ssl_ca``, from a CA made for the run) and two pyproxies in front of
it, both offering TLS to clients (``[tls] require = false``, so one pyproxy serves both kinds
of client): one logs in to the server in plaintext, the other with ``[backend] tls =
"verify"``.  Everything is removed on exit.

What the figures mean
=====================

login
    ``--logins`` sequential cycles of connect + login + close (no statement), each a
    new TCP connection: plaintext, and TLS with the CA checked and the name verified
    (mysqlclient's ``ssl_mode="VERIFY_IDENTITY"``, or PyMySQL's ``ssl_verify_identity``
    where mysqlclient is missing), the client's own TLS set-up included, as an application pays
    it.  ``median`` and ``p90`` in milliseconds, directly to MariaDB and through pyproxy.
    Through pyproxy a login never waits for the server: the client's login is checked by
    pyproxy itself, so backend TLS does not show here.
query
    One connection runs ``SELECT v FROM t WHERE id = <random>`` in a loop for
    ``--duration`` seconds (autocommit, so every statement borrows and returns a pooled
    connection).  ``qps``, ``p50`` latency in milliseconds and ``pyproxy CPU/q``: user +
    system CPU of the pyproxy process over the run divided by the queries, in microseconds.
    Rows: plaintext end to end, TLS from the client only, and TLS on both sides; and
    directly to MariaDB, plaintext and TLS, for reference.  The machine is shared: compare
    the rows of one run, not runs.
idle logged-in client
    pyproxy's RSS growth (``/proc/<pid>/status``) over ``--idle`` clients that log in and
    stay idle, divided by their number: plaintext, and over TLS (each holds an OpenSSL
    connection and its buffers).
"""

from __future__ import annotations

import argparse
import atexit
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import targets  # noqa: E402
from bench.errors import BenchError  # noqa: E402
from bench.measure import percentile, proc_cpu, proc_rss  # noqa: E402
from bench.report import progress  # noqa: E402

ROWS = 10_000


def make_pki(directory: Path) -> dict[str, str]:
    """A CA of the run's own and a certificate for 127.0.0.1 (used by MariaDB and pyproxy)."""
    try:
        import trustme  # noqa: PLC0415
    except ImportError:
        raise BenchError("trustme is missing: pip install -e '.[test]'") from None
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": directory / "ca.pem", "cert": directory / "cert.pem", "key": directory / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    files["cert"].write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    files["key"].write_bytes(issued.private_key_pem.bytes())
    return {name: str(path) for name, path in files.items()}


def driver() -> str:
    """mysqlclient when importable: PyMySQL's plaintext logins wait ~45 ms on delayed ACKs
    (its handshake writes go out in pieces), which would hide what TLS costs."""
    try:
        import MySQLdb  # noqa: F401, PLC0415
    except ImportError:
        return "PyMySQL"
    return "mysqlclient"


def connect(port: int, password: str, ca: str | None) -> Any:
    if driver() == "mysqlclient":
        import MySQLdb  # noqa: PLC0415
        tls: dict[str, Any] = ({"ssl_mode": "VERIFY_IDENTITY", "ssl": {"ca": ca}} if ca
                               else {"ssl_mode": "DISABLED"})
        return MySQLdb.connect(host="127.0.0.1", port=port, user=targets.USER, password=password,
                               database=targets.DATABASE, autocommit=True, connect_timeout=10, **tls)
    import pymysql  # noqa: PLC0415
    tls = {"ssl_ca": ca, "ssl_verify_cert": True, "ssl_verify_identity": True} if ca else {}
    return pymysql.connect(host="127.0.0.1", port=port, user=targets.USER, password=password,
                           database=targets.DATABASE, autocommit=True, connect_timeout=10, **tls)


def login_times(port: int, password: str, ca: str | None, count: int) -> dict[str, float | None]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        conn = connect(port, password, ca)
        times.append((time.perf_counter() - started) * 1000)
        conn.close()
    times.sort()
    return {"median": statistics.median(times), "p90": percentile(times, 90)}


def query_run(port: int, password: str, ca: str | None, seconds: float,
              pid: int | None) -> dict[str, float | None]:
    conn = connect(port, password, ca)
    rng = random.Random(7)
    latencies = []
    try:
        cur = conn.cursor()
        for _ in range(200):  # warm-up: the pool has its connection, caches are hot
            cur.execute(targets.POINT_SQL.format(rng.randint(1, ROWS)))
            cur.fetchall()
        cpu_before = proc_cpu(pid) if pid else None
        end = time.perf_counter() + seconds
        started = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                break
            cur.execute(targets.POINT_SQL.format(rng.randint(1, ROWS)))
            cur.fetchall()
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        cpu = (proc_cpu(pid) - cpu_before) if pid and cpu_before is not None else None
    finally:
        conn.close()
    latencies.sort()
    queries = len(latencies)
    return {"qps": queries / elapsed, "p50": (percentile(latencies, 50) or 0) * 1000,
            "cpu_us": cpu / queries * 1e6 if cpu is not None else None}


def idle_memory(port: int, password: str, ca: str | None, count: int, pid: int) -> float:
    """pyproxy's RSS growth per logged-in idle client, in bytes, over ``count`` clients."""
    before = proc_rss(pid)
    clients = [connect(port, password, ca) for _ in range(count)]
    time.sleep(0.5)
    grown = proc_rss(pid) - before
    for conn in clients:
        conn.close()
    return grown / count


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logins", type=int, default=300, help="login cycles per row (default 300)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per query row (default 10)")
    parser.add_argument("--idle", type=int, default=300, help="idle clients for the memory rows (default 300)")
    parser.add_argument("--quick", action="store_true", help="100 logins and 3 s per query row")
    args = parser.parse_args(argv)
    if args.quick:
        args.logins, args.duration = 100, 3.0
    atexit.register(targets.stop_all)
    work = Path(tempfile.mkdtemp(prefix="pyproxy-bench-tls-"))
    pki = make_pki(work)
    password = secrets.token_hex(8)
    progress("starting a MariaDB sandbox with TLS")
    server, version = targets.start_sandbox(100, password, ROWS, ssl_cert=pki["cert"], ssl_key=pki["key"],
                                            ssl_ca=pki["ca"])
    client_tls = {"tls": {"cert": pki["cert"], "key": pki["key"], "require": False}}
    plain_backend = targets.PyProxy("tls-clients", server, password, 20, "info", work, client_tls)
    tls_backend = targets.PyProxy("tls-both", server, password, 20, "info", work,
                                  {**client_tls, "backend": {"tls": "verify", "ca": pki["ca"]}})
    for proxy in (plain_backend, tls_backend):
        proxy.start()

    progress(f"login: {args.logins} cycles per row")
    logins = {
        "direct, plaintext": login_times(server.port, password, None, args.logins),
        "direct, TLS": login_times(server.port, password, pki["ca"], args.logins),
        "pyproxy, plaintext": login_times(plain_backend.port, password, None, args.logins),
        "pyproxy, TLS": login_times(plain_backend.port, password, pki["ca"], args.logins),
    }
    progress(f"memory: {args.idle} idle clients per row")
    # Each row on a pyproxy of its own that has served the same logins, so that what the
    # first clients made it allocate is already there.
    memory = {
        "plaintext": idle_memory(plain_backend.port, password, None, args.idle, plain_backend.pid),
        "TLS": idle_memory(tls_backend.port, password, pki["ca"], args.idle, tls_backend.pid),
    }
    progress(f"query: {args.duration:g} s per row")
    queries = {
        "direct, plaintext": query_run(server.port, password, None, args.duration, None),
        "direct, TLS": query_run(server.port, password, pki["ca"], args.duration, None),
        "pyproxy, plaintext both sides": query_run(plain_backend.port, password, None, args.duration,
                                                   plain_backend.pid),
        "pyproxy, TLS client only": query_run(plain_backend.port, password, pki["ca"], args.duration,
                                              plain_backend.pid),
        "pyproxy, TLS both sides": query_run(tls_backend.port, password, pki["ca"], args.duration,
                                             tls_backend.pid),
    }
    print(f"\nMariaDB {version}; {driver()} clients; {args.logins} logins per row, "
          f"{args.duration:g} s per query row\n")
    print(f"{'login (connect + login + close)':<34}{'median ms':>10}{'p90 ms':>10}")
    for name, figures in logins.items():
        print(f"{name:<34}{fmt(figures['median'], '.2f'):>10}{fmt(figures['p90'], '.2f'):>10}")
    print(f"\n{'query (1 client, point select)':<34}{'qps':>10}{'p50 ms':>10}{'pyproxy CPU/q us':>18}")
    for name, figures in queries.items():
        print(f"{name:<34}{fmt(figures['qps'], ',.0f'):>10}{fmt(figures['p50'], '.3f'):>10}"
              f"{fmt(figures['cpu_us'], '.0f'):>18}")
    print(f"\n{'idle logged-in client':<34}{'pyproxy RSS':>14}")
    for name, per_client in memory.items():
        print(f"{name:<34}{per_client:>12,.0f} B")
    print(f"\npyproxy logs: {work}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/tls.py: {exc}", file=sys.stderr)
        sys.exit(1)
