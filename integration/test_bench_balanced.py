"""``bench/run.py --workloads balanced`` end to end, with tiny counts, so that the workload keeps
running: two pyproxy instances behind a real HAProxy sharing a budget through a real Redis,
the storm through them, then one instance killed.

No time is checked (speed figures belong to the benchmark); what is checked is what the
workload stands for: every storm client served, the server never holding more than the budget
and the instances' two monitor connections, the killed instance's share reaching the survivor,
and nothing the workload started left running.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from integration.balancer import HAPROXY
from integration.balancer import MISSING as HAPROXY_MISSING
from integration.redis_server import MISSING as REDIS_MISSING
from integration.redis_server import REDIS_SERVER
from pyproxy.sandbox import ProgramNotFound, child_env, find_program

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "run.py"
BUDGET = 4
CLIENTS = 30

pytest.importorskip("redis", reason="the redis package (pip install 'pyproxy[redis]')")
pytestmark = [pytest.mark.skipif(HAPROXY is None, reason=HAPROXY_MISSING),
              pytest.mark.skipif(REDIS_SERVER is None, reason=REDIS_MISSING)]


def running_with(text: str) -> list[str]:
    """Command lines of the processes that name ``text`` (the run's log folder: pyproxy's
    config, HAProxy's config and Redis's folder are all in it)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def test_balanced_tiny_run_serves_everyone_within_the_budget(tmp_path: Path) -> None:
    """30 clients through HAProxy to two instances sharing a budget of 4: all served, the
    server at most at 4 + 2 monitor connections; after the kill the survivor gets the dead
    one's 2 leases, its clients see no error, and the run stops everything it started."""
    try:
        find_program("mariadbd")
    except ProgramNotFound as exc:
        pytest.skip(str(exc))
    logs = tmp_path / "logs"
    results = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--workloads", "balanced", "--storm-clients", str(CLIENTS),
         "--storm-concurrency", "10", "--storm-server-max-connections", "20", "--pool-size",
         str(BUDGET), "--lease-seconds", "2", "--log-dir", str(logs), "--json", str(results)],
        capture_output=True, text=True, timeout=300, env=child_env(), check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert not running_with(str(logs))
    found = json.loads(results.read_text())
    assert found["problems"] == [], found["problems"]
    storm, kill = found["balanced"]["storm"], found["balanced"]["kill"]
    assert (storm["succeeded"], storm["errors"]) == (CLIENTS, {})
    # Each instance keeps one monitor connection (its health probe) beside the pools.
    assert 1 <= storm["max_server_connections"] <= BUDGET + 2
    assert all(log["sessions"] >= CLIENTS // 2 for log in storm["pyproxy_logs"].values())
    assert (kill["dead_share"], kill["survivor_share"]) == (BUDGET // 2, BUDGET // 2)
    assert kill["served_after_kill"] == BUDGET // 2
    assert kill["errors"] == {}
    assert kill["leases_gone_ms"] is not None
    assert kill["max_server_connections"] <= BUDGET + 2
    assert "instances behind HAProxy" in run.stdout
