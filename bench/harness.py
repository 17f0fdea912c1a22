"""What one benchmark run shares between its workloads: the settings, the way load processes
are started, the password and log folder of its targets, and what it has found so far (table
rows, results for --json, problems).

A workload that cannot run is recorded here as a problem (:meth:`Bench.attempt`) and the run
goes on with the next one.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.clients import pick_driver
from bench.errors import BenchError
from bench.report import Row, progress
from bench.targets import PyProxy, start_sandbox, target_for


class Bench:
    """One run of the benchmark, from the command line's settings to the printed report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ctx = multiprocessing.get_context("spawn")
        self.driver = pick_driver(args.driver)
        self.password = "bench-" + os.urandom(6).hex()
        self.log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="pyproxy-bench-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Info: pins and connections are logged, queries never; SIGUSR1 stats need it too.
        self.log_level = "info"
        self.rows: list[Row] = []
        # Tables of their own (the sysbench workloads' three-way comparison), printed after.
        self.extra_tables: list[str] = []
        self.results: dict[str, Any] = {}
        self.problems: list[str] = []
        self.mariadb_version = "?"

    def start_server(self, max_connections: int) -> Any:
        """A sandbox with the point-select table (see :func:`bench.targets.start_sandbox`)."""
        server, self.mariadb_version = start_sandbox(max_connections, self.password,
                                                     self.args.rows)
        return server

    def start_proxy(self, name: str, server: Any, pool_size: int,
                    sections: dict[str, dict[str, Any]] | None = None) -> PyProxy:
        if self.args.workers != 1:
            sections = dict(sections or {})
            sections["proxy"] = {**sections.get("proxy", {}), "workers": self.args.workers}
        proxy = PyProxy(name, server, self.password, pool_size, self.log_level, self.log_dir,
                        sections)
        proxy.start()
        return proxy

    def target(self, server: Any, proxy: PyProxy | None) -> dict[str, Any]:
        """Where the clients connect: ``proxy`` when there is one, else ``server``."""
        return target_for(server, proxy, self.password)

    def attempt(self, label: str, func: Any, *args: Any) -> Any:
        """Run one measurement; a BenchError is recorded as a problem and gives None."""
        try:
            return func(*args)
        except BenchError as exc:
            self.problems.append(f"{label}: FAILED: {exc}")
            progress(f"{label}: FAILED: {exc}")
            return None
