"""The pure helpers of bench/run.py (no server, no processes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "bench" / "run.py"
_spec = importlib.util.spec_from_file_location("bench_run", _PATH)
assert _spec is not None and _spec.loader is not None
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert run.percentile(values, 50) == 50
    assert run.percentile(values, 99) == 99
    assert run.percentile(values, 100) == 100
    assert run.percentile([7], 99) == 7
    assert run.percentile([], 50) is None


def test_split_evenly() -> None:
    assert run.split_evenly(500, 100) == [5] * 100
    assert run.split_evenly(10, 4) == [3, 3, 2, 2]
    assert run.split_evenly(2, 4) == [1, 1, 0, 0]
    assert sum(run.split_evenly(2000, 3)) == 2000
    with pytest.raises(ValueError):
        run.split_evenly(1, 0)


def test_parse_proc_stat_cpu_handles_spaces_in_the_name() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    text = "1234 (python3 -c x) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0"
    assert run.parse_proc_stat_cpu(text, 100) == pytest.approx(3.0)


def test_parse_vmrss() -> None:
    text = "Name:\tpython3\nVmPeak:\t  100 kB\nVmRSS:\t   46080 kB\nThreads:\t1\n"
    assert run.parse_vmrss(text) == 46080 * 1024
    with pytest.raises(ValueError):
        run.parse_vmrss("Name:\tkthreadd\n")


def test_parse_machine_cpu() -> None:
    text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n"
    assert run.parse_machine_cpu(text) == (150, 1000)


def test_summarize_errors() -> None:
    assert run.summarize_errors({}) == 0
    assert run.summarize_errors({"1040": 3, "2013": 1}) == "4 (1040x3, 2013x1)"


def test_count_log_events() -> None:
    lines = [
        json.dumps({"event": "borrow_timeout", "level": "warning"}),
        json.dumps({"event": "borrow_timeout", "level": "warning"}),
        json.dumps({"event": "client_connected", "level": "info"}),
        "2026-01-01T00:00:00+0000 [-] Unhandled Error",
        "2026-01-01T00:00:00+0000 [-] FrontendFactory starting on 1",
        "",
    ]
    counts, odd = run.count_log_events(lines)
    assert counts == {"warning:borrow_timeout": 2, "info:client_connected": 1}
    assert odd == ["2026-01-01T00:00:00+0000 [-] Unhandled Error"]


def test_render_table_aligns_and_computes_ratios() -> None:
    table = run.render_table([
        ("select c=1", "qps", 1000.0, 500.0, ".0f"),
        ("select c=1", "errors", 0, "3 (1040x3)", "d"),
        ("select c=1", "pyproxy CPU us/query", None, 12.5, ".1f"),
        ("storm", "wall s", "FAILED", 1.0, ".2f"),
    ])
    lines = table.splitlines()
    assert lines[0].split() == ["workload", "metric", "direct", "pyproxy", "ratio"]
    assert lines[2].split()[-3:] == ["1000", "500", "0.50"]
    assert lines[2].startswith("select c=1")
    assert lines[3].startswith(" ")  # the workload name is not repeated
    assert lines[4].split()[-3:] == ["-", "12.5", "-"]
    assert lines[5] == ""  # a blank line between workloads
    assert lines[6].split()[-3:] == ["FAILED", "1.00", "-"]
    assert len({len(line) for line in lines[:2]}) == 1


def test_parse_args_quick_and_bounds() -> None:
    args = run.parse_args(["--quick", "--clients", "1,8"])
    assert (args.duration, args.warmup, args.clients) == (3.0, 1.0, [1, 8])
    assert run.parse_args([]).duration == 10.0
    with pytest.raises(SystemExit):
        run.parse_args(["--duration", "0"])
