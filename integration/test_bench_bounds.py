"""bench/bounds.py end to end, with tiny counts: it runs every scenario and reports each one.

No figure is checked: memory and time depend on the machine. The script starts its own
sandbox server and pyproxy processes, so this test needs the MariaDB server binaries but not
``db_server``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pyproxy.sandbox import ProgramNotFound, child_env, find_program

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "bounds.py"
SCENARIOS = ("prelogin", "long_data", "pipeline", "statements")


def test_bounds_quick_run_reports_every_scenario(tmp_path: Path) -> None:
    """A --quick run with tiny counts exits 0 and prints one result line per scenario and
    the table; pyproxy neither exits nor logs a traceback meanwhile."""
    try:
        find_program("mariadbd")
    except ProgramNotFound as exc:
        pytest.skip(str(exc))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--prelogin-clients", "1", "--prelogin-mib", "1",
         "--long-data-chunks", "3", "--long-data-kib", "64", "--pipeline-queries", "50",
         "--pipeline-row-bytes", "1000", "--statements", "100", "--hold", "1", "--settle", "0.2",
         "--log-dir", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=300, env=child_env(), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in SCENARIOS:
        reported = [line for line in lines if line.startswith(f"scenario {name}: ")]
        assert len(reported) == 1, result.stdout
        assert "client got: failed" not in reported[0], reported[0]
    assert "pyproxy exited" not in result.stdout, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
    assert any(line.startswith("Figures are pyproxy's RSS") for line in lines)
