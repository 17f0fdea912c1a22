"""The bare relay, pyproxy pure and pyproxy compiled under the same sysbench load, in one run.

    python3 bench/builds.py [--compiled-tree DIR] [--threads 8,64]
                            [--scripts point_select-text point_select-ps]
                            [--seconds 8] [--warmup 2] [--rounds 3]

What issue-level questions need: is pyproxy's CPU per query at or below the relay's, and what
the optional compiled build (setup.py, PYPROXY_MYPYC=1) changes.  One sandbox MariaDB with
sysbench's table; for every script and thread count, ``--rounds`` rounds, each running the
relay (bench/relay.py), pyproxy from this checkout and pyproxy from a checkout with the
compiled extensions in place, one after the other, so that the machine's drift is spread
over all three.  Each run gets a fresh middle process; its user and system CPU over the
counted window (after ``--warmup``) is divided by the queries sysbench reports for that
window.  The figure per side is the median over the rounds, with every run's total beside it:
the relay's own figure moves by several microseconds from run to run on a shared machine.

Without ``--compiled-tree``, the tracked files of this checkout are copied to a temporary
folder and built there (``setup.py build_ext --inplace``; it takes mypy, a C compiler and
Python's headers, and about half a minute).  Each pyproxy run is checked to have its
build's code mapped: the compiled one with the compiled group's library, the pure one
without.  pyproxy runs with one worker (``[proxy] workers`` adds processes whose CPU this
does not follow).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from bench.errors import BenchError  # noqa: E402
from bench.harness import Bench  # noqa: E402
from bench.measure import parse_proc_stat_times  # noqa: E402
from bench.report import progress  # noqa: E402
from bench.run import parse_args as run_args  # noqa: E402
from bench.targets import PyProxy  # noqa: E402
from bench.workloads import sysbench  # noqa: E402

SIDES = ("relay", "pure", "compiled")
#: The compiled build's mark in a process's memory map: the library of the group
#: setup.py compiles (a module of the group imported by another one of it is made
#: inside that library, so its own small .so may never be mapped).
COMPILED_MARK = "pyproxy_mypyc__mypyc.cpython"


def user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        return parse_proc_stat_times(f.read(), os.sysconf("SC_CLK_TCK"))


def runs_compiled(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return COMPILED_MARK in f.read()


def build_compiled(into: Path) -> Path:
    """A copy of this checkout's tracked files in ``into``, with the compiled extensions
    built in place."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=_REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = _REPO / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    progress(f"building the compiled extensions in {into}")
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=into,
                          env={**os.environ, "PYPROXY_MYPYC": "1"}, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"the compiled build failed: {(done.stderr or done.stdout)[-800:]}")
    return into


def one_run(bench: Bench, server: Any, side: str, script: str, threads: int, args: argparse.Namespace,
            compiled_tree: Path) -> dict[str, float]:
    """One sysbench run through a fresh relay or pyproxy: qps and CPU per query."""
    middle: sysbench.Relay | PyProxy
    if side == "relay":
        middle = sysbench.Relay(server)
    else:
        middle = PyProxy(f"builds-{side}-{script}-t{threads}", server, bench.password, args.pool_size,
                         bench.log_level, bench.log_dir,
                         source=compiled_tree if side == "compiled" else None)
        middle.start()
    try:
        command = sysbench.run_command(script, middle.port, bench.password, threads,
                                       int(args.warmup + args.seconds))
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(max(0.0, started + args.warmup - time.monotonic()))
        user0, system0 = user_system(middle.pid)
        out, err = process.communicate(timeout=args.warmup + args.seconds + 120)
        user1, system1 = user_system(middle.pid)
        if side != "relay" and runs_compiled(middle.pid) != (side == "compiled"):
            raise BenchError(f"the {side} pyproxy did not run the build it should")
    finally:
        middle.stop()
    if process.returncode != 0:
        raise BenchError(f"sysbench {script} t={threads} {side}: {(err or out)[-400:]}")
    queries = sysbench.window_queries(out, args.warmup)
    if not queries:
        raise BenchError(f"sysbench {script} t={threads} {side}: no per-second reports")
    return {"qps": queries / args.seconds, "user": (user1 - user0) / queries * 1e6,
            "system": (system1 - system0) / queries * 1e6}


def summary(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per side, the median qps, user, system and total CPU per query over the rounds."""
    out: dict[str, dict[str, float]] = {}
    for side, figures in runs.items():
        if figures:
            out[side] = {key: statistics.median(f[key] for f in figures) for key in ("qps", "user", "system")}
            out[side]["total"] = statistics.median(f["user"] + f["system"] for f in figures)
    return out


def report(label: str, runs: dict[str, list[dict[str, float]]]) -> str:
    medians = summary(runs)
    lines = [f"{label}: median of {max(len(v) for v in runs.values())} runs, CPU us per query"]
    relay = medians.get("relay", {}).get("total")
    for side in SIDES:
        if side not in medians:
            continue
        m = medians[side]
        totals = ", ".join(f"{f['user'] + f['system']:.1f}" for f in runs[side])
        ratio = f"  x{m['total'] / relay:.2f} of the relay" if relay and side != "relay" else ""
        lines.append(f"  {side:9} {m['qps']:8,.0f} qps  user {m['user']:5.1f}  system {m['system']:5.1f}"
                     f"  total {m['total']:5.1f}{ratio}  (runs: {totals})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compiled-tree", type=Path,
                        help="a checkout with the compiled build in place (default: build one)")
    parser.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[8, 64])
    parser.add_argument("--scripts", nargs="+", choices=("point_select-text", "point_select-ps"),
                        default=["point_select-text", "point_select-ps"])
    parser.add_argument("--seconds", type=float, default=8.0, help="counted seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool-size", type=int, default=20)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or any(t < 1 for t in args.threads):
        parser.error("--rounds, --seconds and --threads must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("sysbench") is None:
        print("sysbench is not installed (scripts/install-deps installs it)", file=sys.stderr)
        return 2
    bench = Bench(run_args(["--workloads", "sysbench", "--quick"]))
    with tempfile.TemporaryDirectory(prefix="pyproxy-compiled-") as scratch:
        tree = args.compiled_tree or build_compiled(Path(scratch))
        server = bench.start_server(200)
        try:
            sysbench.prepare(bench, server)
            tables = []
            for script in args.scripts:
                for threads in args.threads:
                    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
                    for _ in range(args.rounds):
                        for side in SIDES:
                            figures = one_run(bench, server, side, script, threads, args, tree)
                            progress(f"{script} t={threads} {side}: {figures['qps']:,.0f} qps, "
                                     f"{figures['user'] + figures['system']:.1f} us/query")
                            runs[side].append(figures)
                    tables.append(report(f"{script}, {threads} threads", runs))
        finally:
            server.stop()
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
