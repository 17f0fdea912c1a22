"""pyproxy.admin_merge: the workers' answers to an admin command put together, as data."""

from __future__ import annotations

from typing import Any

import pytest

from pyproxy import admin_merge as merge


def stats(*pairs: tuple[str, int]) -> dict[str, Any]:
    return {"rows": [list(pair) for pair in pairs]}


def test_concatenated_rows_come_in_worker_order_and_errors_give_none() -> None:
    """Rows of every worker that gave rows, worker 0's first, whatever order they arrived in."""
    answers = {1: {"rows": [[2, "app", 1], [4, "app", 1]]}, 0: {"rows": [[1, "app", 0]]},
               2: {"error": [1105, "HY000", "broken"]}}
    assert merge.concatenated(answers) == [[1, "app", 0], [2, "app", 1], [4, "app", 1]]
    assert merge.concatenated({}) == []
    assert merge.answered(answers, "rows") == [0, 1]


def test_first_rows_are_the_lowest_answering_workers() -> None:
    assert merge.first_rows({1: {"rows": [["b"]]}, 2: {"rows": [["c"]]}}) == [["b"]]
    assert merge.first_rows({0: {"error": [1105, "HY000", "x"]}, 1: {"rows": []}}) == []
    assert merge.first_rows({0: {"info": "ok"}}) is None


def test_stats_are_summed_states_take_the_largest_and_the_average_is_worked_out_again() -> None:
    worker0 = stats(("uptime_seconds", 100), ("client_connections", 3), ("commands", 10),
                    ("com_query", 8), ("com_ping", 2), ("commands_relayed", 8),
                    ("statement_latency_total_us", 800), ("statement_latency_avg_us", 100),
                    ("failovers", 1), ("paused", 0), ("debug_statements_seconds_left", 0),
                    ("workers", 1), ("workers_answered", 1))
    worker1 = stats(("uptime_seconds", 40), ("client_connections", 2), ("commands", 5),
                    ("com_query", 2), ("com_stmt_prepare", 3), ("commands_relayed", 2),
                    ("statement_latency_total_us", 1200), ("statement_latency_avg_us", 600),
                    ("failovers", 1), ("paused", 1), ("debug_statements_seconds_left", 30),
                    ("workers", 1), ("workers_answered", 1))
    rows = merge.summed_stats({1: worker1, 0: worker0}, workers=3)
    table = dict(rows)
    assert table["client_connections"] == 5 and table["commands"] == 15 and table["com_query"] == 10
    assert table["com_ping"] == 2 and table["com_stmt_prepare"] == 3
    # 2000 us over 10 relayed statements, not the mean of the workers' averages (350).
    assert table["statement_latency_avg_us"] == 200
    # Seen alike by every worker, or states: the largest.
    assert table["failovers"] == 1 and table["paused"] == 1 and table["debug_statements_seconds_left"] == 30
    assert table["uptime_seconds"] == 100
    assert table["workers"] == 3 and table["workers_answered"] == 2
    names = [name for name, _ in rows]
    assert len(names) == len(set(names))
    # A command only worker 1 ran is listed with the other commands, not at the end.
    assert names.index("com_stmt_prepare") == names.index("com_query") + 1
    assert names[-2:] == ["workers", "workers_answered"]


def test_stats_of_no_worker_and_of_no_relayed_statement() -> None:
    assert merge.summed_stats({}, 2) == [("workers", 2), ("workers_answered", 0)]
    rows = dict(merge.summed_stats({0: stats(("commands_relayed", 0), ("statement_latency_total_us", 0),
                                              ("statement_latency_avg_us", 0))}, 1))
    assert rows["statement_latency_avg_us"] == 0


def test_one_info_is_the_common_text_or_each_workers() -> None:
    assert merge.one_info({0: {"info": "resumed"}, 1: {"info": "resumed"}}) == "resumed"
    assert merge.one_info({1: {"info": "pyproxy was not paused"}, 0: {"info": "resumed"}}) == \
        "worker 0: resumed; worker 1: pyproxy was not paused"
    assert merge.one_info({0: {"error": [1105, "HY000", "bad"]}}) is None
    assert merge.one_info({}) is None


def test_missing_and_failed_workers_become_notes() -> None:
    """Not running, silent, or failing: each is one row of SHOW WARNINGS naming the worker."""
    answers = {0: {"rows": []}, 2: {"error": [1105, "HY000", "reload failed: bad key"]}}
    notes = merge.missing(4, {0, 1, 2}, answers, 5.0)
    assert notes == [
        ("Warning", 1105, "worker 1 did not answer within 5s: its part is missing"),
        ("Warning", 1105, "worker 3 is not running (it is being started again): its part is missing")]
    assert merge.failed(answers) == [("Error", 1105, "worker 2: reload failed: bad key")]
    assert merge.first_error(answers) == (1105, "HY000", "reload failed: bad key")
    assert merge.first_error({0: {"info": ""}}) is None
    assert merge.missing(2, {0, 1}, {0: {}, 1: {}}, 5.0) == []


@pytest.mark.parametrize(("client_id", "workers", "owner"), [
    (1, 2, 0), (2, 2, 1), (3, 2, 0), (7, 3, 0), (8, 3, 1), (9, 3, 2), (5, 1, 0), (0, 2, None), (-4, 2, None)])
def test_owner_follows_how_ids_are_given(client_id: int, workers: int, owner: int | None) -> None:
    assert merge.owner(client_id, workers) == owner


def test_owner_agrees_with_the_proxies_ids() -> None:
    """Each worker's own ids map back to it (pyproxy.proxy gives them)."""
    from twisted.internet.task import Clock

    from pyproxy import config as configuration
    from pyproxy.proxy import Proxy, ServerInfo

    config = configuration.load(None, {"PYPROXY_USERS": "app:pw"})
    for index in range(3):
        proxy = Proxy(config, Clock(), ServerInfo("5.5.5", 0, 45, 2), worker=(index, 3))
        assert {merge.owner(next(proxy.client_ids), 3) for _ in range(6)} == {index}
