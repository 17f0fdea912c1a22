"""The pure helpers of the benchmark in bench/ (no server, no processes)."""

from __future__ import annotations

import json
import os
import sys
from array import array
from pathlib import Path

import pytest

# bench/ is a folder of the checkout, not an installed package; bench/run.py imports it the
# same way.
_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.append(str(_REPO))

from bench import event_loop, measure, processes, pyproxy_log, report, run, targets  # noqa: E402
from bench.workloads import balanced, faults, sysbench  # noqa: E402


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert measure.percentile(values, 50) == 50
    assert measure.percentile(values, 99) == 99
    assert measure.percentile(values, 100) == 100
    assert measure.percentile([7], 99) == 7
    assert measure.percentile([], 50) is None


def test_split_evenly() -> None:
    assert processes.split_evenly(500, 100) == [5] * 100
    assert processes.split_evenly(10, 4) == [3, 3, 2, 2]
    assert processes.split_evenly(2, 4) == [1, 1, 0, 0]
    assert sum(processes.split_evenly(2000, 3)) == 2000
    with pytest.raises(ValueError):
        processes.split_evenly(1, 0)


def test_parse_proc_stat_cpu_handles_spaces_in_the_name() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    text = "1234 (python3 -c x) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0"
    assert measure.parse_proc_stat_cpu(text, 100) == pytest.approx(3.0)


def test_parse_vmrss() -> None:
    text = "Name:\tpython3\nVmPeak:\t  100 kB\nVmRSS:\t   46080 kB\nThreads:\t1\n"
    assert measure.parse_vmrss(text) == 46080 * 1024
    with pytest.raises(ValueError):
        measure.parse_vmrss("Name:\tkthreadd\n")


def test_parse_machine_cpu() -> None:
    text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n"
    assert measure.parse_machine_cpu(text) == (150, 1000)


def test_summarize_errors() -> None:
    assert report.summarize_errors({}) == 0
    assert report.summarize_errors({"1040": 3, "2013": 1}) == "4 (1040x3, 2013x1)"


def test_count_log_events() -> None:
    lines = [
        json.dumps({"event": "borrow_timeout", "level": "warning"}),
        json.dumps({"event": "borrow_timeout", "level": "warning"}),
        json.dumps({"event": "client_connected", "level": "info"}),
        "2026-01-01T00:00:00+0000 [-] Unhandled Error",
        "2026-01-01T00:00:00+0000 [-] FrontendFactory starting on 1",
        "",
    ]
    counts, odd = pyproxy_log.count_log_events(lines)
    assert counts == {"warning:borrow_timeout": 2, "info:client_connected": 1}
    assert odd == ["2026-01-01T00:00:00+0000 [-] Unhandled Error"]


def test_render_table_aligns_and_computes_ratios() -> None:
    table = report.render_table([
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


def _event(**fields: object) -> str:
    return json.dumps(fields)


def test_newest_stats_takes_the_last_events_of_the_pool() -> None:
    lines = [
        _event(event="pool_stats", pool="app", borrows=10, waits=2),
        _event(event="pool_stats", pool="other", borrows=99, waits=99),
        _event(event="pin_summary", pins={}, clients=0),
        "2026-01-01T00:00:00+0000 [-] not JSON",
        '{"truncated": ',
        _event(event="pool_stats", pool="app", borrows=30, waits=5),
        _event(event="pin_summary", pins={"user variable": 1}, clients=3),
    ]
    found = pyproxy_log.newest_stats(lines, "app")
    assert found["pool"]["borrows"] == 30
    assert found["pins"] == {"user variable": 1}
    assert pyproxy_log.newest_stats(["{}", "x"], "app") == {"pool": None, "pins": None, "clients": None,
                                                          "resets": None}


def test_sessions_delta_counts_accepted_connections_of_the_workload() -> None:
    """Logins are logged at debug level only, so the sessions of a workload come from the
    cumulative ``client_stats`` counter."""
    lines = [_event(event="client_stats", accepted=40, open=0, closed={"COM_QUIT": 40}),
             _event(event="client_stats", accepted=140, open=2, closed={"COM_QUIT": 138})]
    first = pyproxy_log.newest_stats(lines[:1], "app")
    second = pyproxy_log.newest_stats(lines, "app")
    assert pyproxy_log.sessions_delta(first, None) == 40
    assert pyproxy_log.sessions_delta(second, first) == 100
    assert pyproxy_log.sessions_delta({"clients": None}, first) is None


def test_stats_delta_subtracts_counters_and_keeps_percentiles() -> None:
    def snapshot(borrows: int, waits: int, p99: float, pins: dict[str, int]) -> dict:
        return {"pool": {"borrows": borrows, "waits": waits, "timeouts": 0, "opened": 4,
                         "borrow_wait_p50_ms": 0.0, "borrow_wait_p99_ms": p99,
                         "borrow_wait_max_ms": 9.5},
                "pins": pins, "resets": sum(pins.values())}

    first = snapshot(100, 10, 1.5, {"temporary table": 1})
    second = snapshot(350, 60, 2.5, {"temporary table": 1, "GET_LOCK": 2})
    assert pyproxy_log.stats_delta(first, None) == {
        "borrows": 100, "waits": 10, "timeouts": 0, "opened": 4, "wait_p50_ms": 0.0,
        "wait_p99_ms": 1.5, "wait_max_ms": 9.5, "resets": 1, "pins": {"temporary table": 1}}
    delta = pyproxy_log.stats_delta(second, first)
    assert (delta["borrows"], delta["waits"], delta["opened"], delta["resets"]) == (250, 50, 0, 2)
    assert delta["wait_p99_ms"] == 2.5
    assert delta["pins"] == {"GET_LOCK": 2}
    # No pool_stats (no pool yet) and no pin_summary: nothing is made up.
    empty = pyproxy_log.stats_delta({"pool": None, "pins": None}, first)
    assert empty["borrows"] is None and empty["wait_p99_ms"] is None and empty["pins"] is None
    assert empty["resets"] is None


def test_pin_share_and_borrows_text() -> None:
    assert report.pin_share(0, 0) == "no logins"
    assert report.pin_share(0, 1234, {}) == "0.0% of 1234"
    assert report.pin_share(3, 200, {"user variable": 1, "GET_LOCK": 2}) == \
        "1.5% of 200 (GET_LOCK x2, user variable x1)"
    assert report.borrows_text(250, 50) == "250 (50 waited)"
    assert report.borrows_text(None, None) is None


def test_pyproxy_rows() -> None:
    result = {"pyproxy_log": {"pinned_share": "0.0% of 16", "borrows": 250, "waits": 50,
                              "resets_per_1000": 0.0, "wait_p50_ms": 0.0, "wait_p99_ms": 2.5}}
    rows = report.pyproxy_rows("select c=16", result)
    assert [row[1] for row in rows] == ["pinned share", "pyproxy borrows (waited)",
                                        "resets per 1,000 borrows",
                                        "borrow wait p50 ms (recent)",
                                        "borrow wait p99 ms (recent)"]
    assert [row[3] for row in rows] == ["0.0% of 16", "250 (50 waited)", 0.0, 0.0, 2.5]
    assert all(row[2] is None for row in rows)  # no direct figure
    assert {row[3] for row in report.pyproxy_rows("storm", None)} == {"FAILED"}
    # The table renders them (strings as they are, numbers with their format).
    assert "250 (50 waited)" in report.render_table(rows)


def test_new_log_lines_leaves_a_partial_line_for_later(tmp_path: Path) -> None:
    proxy = targets.PyProxy("p", None, "pw", 1, "info", tmp_path)
    proxy.log_path.write_bytes(b'{"event": "a"}\n{"event": "b')
    assert proxy.new_log_lines() == ['{"event": "a"}']
    with open(proxy.log_path, "ab") as f:
        f.write(b'"}\n')
    assert proxy.new_log_lines() == ['{"event": "b"}']
    assert proxy.new_log_lines() == []


def test_pin_stats_option_is_gone() -> None:
    with pytest.raises(SystemExit):
        run.parse_args(["--pin-stats"])


def test_reconnects_after_lost_connections_and_read_only_when_direct() -> None:
    for code in ("2006", "2013", "2055", "0", "OSError", "AttributeError"):
        assert faults.reconnects_after(code, direct=True), code
        assert faults.reconnects_after(code, direct=False), code
    assert faults.reconnects_after("1290", direct=True)
    assert not faults.reconnects_after("1290", direct=False)
    for code in ("1213", "1205", "2027", "9001"):
        assert not faults.reconnects_after(code, direct=True), code


def test_recovery_figures() -> None:
    figures = measure.recovery_figures(10.0, [10.5, None, 10.1, 12.0, 10.3])
    assert figures["clients"] == 5
    assert figures["recovered"] == 4
    assert figures["first_ms"] == pytest.approx(100.0)
    assert figures["p50_ms"] == pytest.approx(300.0)  # nearest rank of 100, 300, 500, 2000
    assert figures["max_ms"] == pytest.approx(2000.0)
    assert measure.recovery_figures(1.0, [None, None]) == {
        "clients": 2, "recovered": 0, "first_ms": None, "p50_ms": None, "max_ms": None}


def test_fault_rows() -> None:
    direct = {"committed": 900, "errors": {"1290": 16}, "reconnects": 16, "first_ms": 40.0,
              "p50_ms": 45.0, "max_ms": 60.0, "clients": 16, "recovered": 16,
              "fault_ms": 70.0, "sums_intact": "yes"}
    through = {**direct, "errors": {}, "reconnects": 0, "first_ms": 400.0, "recovered": 15}
    rows = report.fault_rows("failover", *report.FAULTS["failover"], direct, through)
    by_metric = {metric: (d, p) for _, metric, d, p, _ in rows}
    assert by_metric["client errors"] == ("16 (1290x16)", 0)
    assert by_metric["  of autocommit writers"] == (None, None)  # results without the split
    assert by_metric["first write after the flip ms"] == (40.0, 400.0)
    assert by_metric["clients writing again"] == ("16/16", "15/16")
    assert by_metric["SET GLOBAL read_only=1 took ms"] == (70.0, 70.0)
    assert by_metric["balance sums intact"] == ("yes", "yes")
    restart = report.fault_rows("restart", *report.FAULTS["restart"], direct, None)
    by_metric = {metric: (d, p) for _, metric, d, p, _ in restart}
    assert by_metric["server accepting again after the kill ms"] == (70.0, "FAILED")
    assert by_metric["clients writing again"] == ("16/16", "FAILED")
    assert "FAILED" in report.render_table(restart)


def test_fault_rows_split_errors_by_writer_kind() -> None:
    """The failover figures say which errors the autocommit writers saw, apart from the
    transaction writers' (through pyproxy the former should see none)."""
    direct = {"errors": {"1290": 16}, "errors_transactions": {"1290": 9},
              "errors_autocommit": {"1290": 7}, "clients": 16, "recovered": 16}
    through = {**direct, "errors": {"1290": 3}, "errors_transactions": {"1290": 3},
               "errors_autocommit": {}}
    rows = report.fault_rows("failover", *report.FAULTS["failover"], direct, through)
    by_metric = {metric: (d, p) for _, metric, d, p, _ in rows}
    assert by_metric["  of transaction writers"] == ("9 (1290x9)", "3 (1290x3)")
    assert by_metric["  of autocommit writers"] == ("7 (1290x7)", 0)


def test_fault_clients_of_both_kinds() -> None:
    """Every other fault-workload client writes in autocommit, alternating across load
    processes, and its one statement moves money between both accounts."""
    kinds = [faults.is_autocommit_writer(index, slot) for index in range(2) for slot in range(3)]
    assert kinds == [False, True, False, True, False, True]
    assert faults.move_statement(3, 7, 1) == (
        "UPDATE accounts SET balance = balance + IF(id = 3, -1, 1) WHERE id IN (3, 7)")


def test_parse_args_fault_workloads() -> None:
    args = run.parse_args(["--workloads", "failover", "restart"])
    assert args.workloads == ["failover", "restart"]
    assert (args.failover_clients, args.failover_before, args.failover_after) == (16, 2.0, 6.0)
    assert run.parse_args(["--quick"]).failover_after == 4.0
    assert "failover" in run.parse_args([]).workloads
    for bad in (["--failover-clients", "0"], ["--accounts", "1"],
                ["--endpoint-delay", "9", "--failover-after", "5"]):
        with pytest.raises(SystemExit):
            run.parse_args(bad)


def test_merge_errors() -> None:
    errors, first = processes.merge_errors([
        {"errors": {}, "first_error": None},
        {"errors": {"1290": 2}, "first_error": "1290 read-only"},
        {"errors": {"1290": 1, "2013": 1}, "first_error": "2013 lost"},
    ])
    assert errors == {"1290": 3, "2013": 1}
    assert first == "1290 read-only"
    assert processes.merge_errors([]) == ({}, None)


def test_merge_latencies() -> None:
    """The load processes send their latencies as bytes; they come back as one array."""
    first, second = array("d", [0.5, 0.25]), array("d", [1.0])
    merged = processes.merge_latencies([{"latencies": first.tobytes()},
                                        {"latencies": second.tobytes()}])
    assert list(merged) == [0.5, 0.25, 1.0]
    assert list(processes.merge_latencies([])) == []


def test_select_and_storm_rows_say_failed_for_a_side_that_did_not_run() -> None:
    """A side that failed shows FAILED in every row of its column, the other side its figures,
    and the pyproxy-only rows stay empty on the direct side."""
    direct = {"qps": 1000.0, "p50_ms": 0.2, "p99_ms": 0.4, "errors": {}, "cycles_per_s": 90.0,
              "succeeded": 300, "wall_s": 1.5, "max_server_connections": 40}
    for rows in (report.select_rows("select c=16", direct, None),
                 report.storm_rows("storm", direct, None)):
        by_metric = {metric: (d, p) for _, metric, d, p, _ in rows}
        assert {p for _, p in by_metric.values()} == {"FAILED"}
        assert by_metric["errors"] == (0, "FAILED")
        assert by_metric["pinned share"] == (None, "FAILED")
        assert "FAILED" in report.render_table(rows)
    select = {row[1]: row[2] for row in report.select_rows("select c=16", direct, None)}
    assert (select["qps"], select["p99 latency ms"]) == (1000.0, 0.4)
    storm = {row[1]: row[2] for row in report.storm_rows("storm", direct, None)}
    assert (storm["succeeded"], storm["max server conns"]) == (300, 40)


def test_balanced_rows_put_each_instance_apart_and_say_failed() -> None:
    """pyproxy's column only; each instance's pool figures under its own name; a phase that
    failed shows FAILED in its rows while the other keeps its figures."""
    storm = {"instances": 2, "cycles_per_s": 900.0, "succeeded": 500, "errors": {},
             "budget": 20, "max_server_connections": 22, "server_max_used_connections": 22,
             "pyproxy_logs": {"b": {"sessions": 251, "borrows": 600, "waits": 40},
                              "a": {"sessions": 252, "borrows": 610, "waits": 50}}}
    rows = report.balanced_rows("balanced", storm, None)
    assert all(direct is None for _, _, direct, _, _ in rows)
    by_metric = {(w, metric): value for w, metric, _, value, _ in rows}
    assert by_metric[("balanced", "clients per instance")] == "252 / 251"
    assert by_metric[("balanced a", "pyproxy borrows (waited)")] == "610 (50 waited)"
    assert by_metric[("balanced b", "pyproxy borrows (waited)")] == "600 (40 waited)"
    assert by_metric[("balanced", "max server conns")] == 22
    assert by_metric[("balanced", "kill -9: survivor uses its share ms")] == "FAILED"
    kill = {"dead_share": 10, "survivor_share": 10, "first_extra_ms": 8123.0, "errors": {}}
    rows = report.balanced_rows("balanced", None, kill)
    by_metric = {metric: value for _, metric, _, value, _ in rows}
    assert by_metric["cycles/s (successful)"] == "FAILED"
    assert by_metric["clients per instance"] == "FAILED"
    assert by_metric["kill -9: survivor uses its share ms"] == 8123.0
    assert by_metric["kill -9: survivor's client errors"] == 0
    assert "FAILED" in report.render_table(rows)


def test_lease_pid_reads_the_instance_of_a_lease() -> None:
    """Members are host:pid:worker:random:serial, as pyproxy.redis_budget makes them."""
    assert balanced.lease_pid("db-proxy-1:4242:0:a1b2c3:17") == 4242
    assert balanced.lease_pid("pod:7:1:ffffff:1") == 7


def test_parse_args_balanced() -> None:
    """Not in the default set; lease_seconds is pyproxy's own unless given, and bounded."""
    assert "balanced" not in run.parse_args([]).workloads
    args = run.parse_args(["--workloads", "balanced"])
    assert (args.workloads, args.lease_seconds) == (["balanced"], None)
    assert run.parse_args(["--workloads", "balanced", "--lease-seconds", "2"]).lease_seconds == 2
    for bad in (["--lease-seconds", "0"], ["--lease-seconds", "121"],
                ["--workloads", "balanced", "--pool-size", "1"]):
        with pytest.raises(SystemExit):
            run.parse_args(bad)


def test_idle_rows() -> None:
    """Memory in MiB, pyproxy's column only; no figure after close when pyproxy had exited."""
    mib = 1024 * 1024
    result = {"opened": 2000, "errors": {"1040": 2}, "rss_before": 40 * mib,
              "rss_after": 45 * mib, "rss_after_close": None,
              "bytes_per_idle_connection": 2621.44, "server_connections": 5,
              "pyproxy_log": {"pinned_share": "0.0% of 2004", "borrows": 10, "waits": 0}}
    rows = report.idle_rows("idle 2000 clients", result)
    by_metric = {metric: (d, p) for _, metric, d, p, _ in rows}
    assert all(d is None for d, _ in by_metric.values())
    assert by_metric["login errors"] == (None, "2 (1040x2)")
    assert by_metric["pyproxy RSS after MiB"] == (None, 45.0)
    assert by_metric["pyproxy RSS after close MiB"] == (None, None)
    assert by_metric["server conns (backend)"] == (None, 5)
    assert by_metric["pyproxy borrows (waited)"] == (None, "10 (0 waited)")


SYSBENCH_OUTPUT = """\
Running the test with following options:
Number of threads: 8
Report intermediate results every 1 second(s)

[ 1s ] thds: 8 tps: 9000.00 qps: 9000.00 (r/w/o: 9000.00/0.00/0.00) lat (ms,95%): 1.10 err/s: 0.00 reconn/s: 0.00
[ 2s ] thds: 8 tps: 10000.00 qps: 10000.00 (r/w/o: 10000.00/0.00/0.00) lat (ms,95%): 1.00 err/s: 0.00 reconn/s: 0.00
[ 3s ] thds: 8 tps: 11000.50 qps: 11000.50 (r/w/o: 11000.50/0.00/0.00) lat (ms,95%): 0.90 err/s: 0.00 reconn/s: 0.00
SQL statistics:
    queries performed:
        read:                            30000
        other:                           0
        total:                           30000
    transactions:                        30000  (9999.12 per sec.)
    queries:                             30001  (9999.45 per sec.)
    ignored errors:                      2      (0.67 per sec.)
    reconnects:                          0      (0.00 per sec.)

Latency (ms):
         min:                                    0.21
         95th percentile:                        1.01
"""


def test_sysbench_summary_and_counted_window() -> None:
    figures = sysbench.parse_sysbench(SYSBENCH_OUTPUT)
    assert figures["queries"] == 30001 and figures["queries_per_s"] == 9999.45
    assert figures["transactions"] == 30000 and figures["errors"] == 2
    assert figures["reconnects"] == 0 and figures["p95_ms"] == 1.01
    # Only the reports after the warm-up count: seconds 2 and 3 after a 1 s warm-up.
    assert sysbench.window_queries(SYSBENCH_OUTPUT, 1.0) == 21000.5
    assert sysbench.window_queries(SYSBENCH_OUTPUT, 0.0) == 30000.5
    assert sysbench.window_queries("no reports", 1.0) == 0.0


def test_sysbench_table_compares_pyproxy_with_the_relay() -> None:
    results = {"point_select-ps t=8": {
        "direct": {"qps": 60000.0, "proxy_cpu_us_per_query": None, "errors": 0},
        "relay": {"qps": 12000.0, "proxy_cpu_us_per_query": 40.0, "errors": 0},
        "pyproxy": None}}
    table = sysbench.render(results).splitlines()
    assert table[0].split() == ["sysbench", "metric", "direct", "relay", "pyproxy",
                                "pyproxy/relay"]
    qps = next(line for line in table if "qps" in line).split()
    assert qps[-4:] == ["60000", "12000", "FAILED", "-"]
    results["point_select-ps t=8"]["pyproxy"] = {"qps": 9000.0, "proxy_cpu_us_per_query": 50.0,
                                                "errors": 0}
    cpu = next(line for line in sysbench.render(results).splitlines() if "proxy CPU" in line)
    assert cpu.split()[-3:] == ["40.0", "50.0", "1.25"]


def test_run_accepts_the_sysbench_options() -> None:
    args = run.parse_args(["--workloads", "sysbench", "--sysbench-threads", "4,16",
                           "--sysbench-scripts", "read_write", "--quick"])
    assert args.sysbench_threads == [4, 16] and args.sysbench_scripts == ["read_write"]
    assert args.sysbench_time == args.duration == 3.0
    with pytest.raises(SystemExit):
        run.parse_args(["--sysbench-threads", "0"])


def test_event_loop_reads_every_event_with_both_loop_bodies() -> None:
    """Both reactors serve each round's event (per_event checks the count), and both
    figures come out; which is smaller is the benchmark's to say, not a test's."""
    figures = event_loop.measure(200, repeats=1)
    assert set(figures) == {"stock", "pyproxy"} and all(value > 0 for value in figures.values())


@pytest.mark.parametrize(("classic", "prepared"), [(False, False), (True, False), (False, True)])
def test_hotpath_round_trips_reach_the_client(classic: bool, prepared: bool) -> None:
    """Every kind of round trip bench/hotpath.py times runs end to end (run() checks
    that the replies reached the client): point selects for both kinds of client, and
    the execute of a prepared statement, whose id the client got from pyproxy."""
    from bench import hotpath  # noqa: PLC0415 - it puts tests/ on the path for its vectors

    assert hotpath.run(50, classic, prepared) > 0


@pytest.mark.parametrize("classic", [False, True])
def test_hotpath_waiting_runs_every_statement_through_the_line(classic: bool) -> None:
    """--waiting: three clients on one connection, each statement waiting its turn;
    run_waiting checks that the second client waited and every client got its replies."""
    from bench import hotpath  # noqa: PLC0415

    assert hotpath.run_waiting(60, classic) > 0


def test_builds_summary_takes_medians_and_compares_with_the_relay() -> None:
    from bench import builds  # noqa: PLC0415

    runs = {
        "relay": [{"qps": 100.0, "user": 20.0, "system": 20.0}, {"qps": 120.0, "user": 18.0, "system": 22.0},
                  {"qps": 90.0, "user": 25.0, "system": 25.0}],
        "pure": [{"qps": 80.0, "user": 30.0, "system": 20.0}] * 3,
        "compiled": [{"qps": 110.0, "user": 18.0, "system": 18.0}] * 3,
    }
    medians = builds.summary(runs)
    assert medians["relay"] == {"qps": 100.0, "user": 20.0, "system": 22.0, "total": 40.0}
    assert medians["compiled"]["total"] == 36.0
    text = builds.report("point_select-text, 8 threads", runs)
    assert "median of 3 runs" in text
    assert "x1.25 of the relay" in text and "x0.90 of the relay" in text
    assert "(runs: 40.0, 40.0, 50.0)" in text


def test_builds_reads_its_own_cpu_and_checks_its_arguments() -> None:
    from bench import builds  # noqa: PLC0415

    user, system = builds.user_system(os.getpid())
    assert user > 0 and system >= 0
    assert isinstance(builds.runs_compiled(os.getpid()), bool)
    args = builds.parse_args(["--threads", "8,64", "--rounds", "2"])
    assert (args.threads, args.rounds, args.scripts) == ([8, 64], 2, ["point_select-text", "point_select-ps"])
    with pytest.raises(SystemExit):
        builds.parse_args(["--rounds", "0"])
