"""The workers' answers to one admin command, put together as one pyproxy's.

With ``[proxy] workers`` the supervisor's console (pyproxy.worker_admin) asks
every worker and gets back, from each that answers in time, one of
``{"rows": [...]}`` (a table's rows), ``{"info": "..."}`` (an OK's text) or
``{"error": [code, sqlstate, message]}``.  Pure data in, data out, so every
rule here is unit-tested without a process:

* tables that list connections (SHOW POOLS, CLIENTS, SERVERS) are the
  workers' rows one after the other, in worker order; each row carries its
  worker's index already (its ``worker`` column);
* SHOW STATS adds up each counter, keeps the largest of what is a state or is
  seen by every worker alike, and works the average latency out again from
  the sums (as pyproxy.worker_metrics does for the metrics page);
* SHOW TARGETS and SHOW VERSION are the first answering worker's;
* a control's OK text is the workers' common one, or each worker's;
* a worker that was not running, gave no answer in time or failed becomes a
  row of SHOW WARNINGS, never a wait.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

#: One row of SHOW WARNINGS: level, code, message (pyproxy.admin.Note).
Note = tuple[str, int, str]
#: ER_UNKNOWN_ERROR: the code of a note about a worker.
WORKER_NOTE = 1105

#: SHOW STATS rows that are not amounts: the largest worker's figure stands.
#: A failover is seen by every worker's own probes, so it is counted once.
LARGEST = frozenset({"uptime_seconds", "paused", "debug_statements_seconds_left", "failovers"})
#: SHOW STATS rows the whole sets: how many workers, how many answered.
COUNTED = frozenset({"workers", "workers_answered"})

Answers = Mapping[int, Mapping[str, Any]]


def missing(count: int, asked: Collection[int], answers: Answers, timeout: float) -> list[Note]:
    """A warning for each of the ``count`` workers that has no part in the answer:
    not running (it is being started again) or silent for ``timeout`` seconds."""
    notes = []
    for index in range(count):
        if index not in asked:
            notes.append(("Warning", WORKER_NOTE,
                          f"worker {index} is not running (it is being started again): its part is missing"))
        elif index not in answers:
            notes.append(("Warning", WORKER_NOTE,
                          f"worker {index} did not answer within {timeout:g}s: its part is missing"))
    return notes


def failed(answers: Answers) -> list[Note]:
    """An error note for each worker that answered with an error, naming it."""
    return [("Error", int(answer["error"][0]), f"worker {index}: {answer['error'][2]}")
            for index, answer in sorted(answers.items()) if "error" in answer]


def first_error(answers: Answers) -> tuple[int, str, str] | None:
    """The lowest worker's error as (code, sqlstate, message), or None."""
    for _, answer in sorted(answers.items()):
        if "error" in answer:
            code, sqlstate, message = answer["error"]
            return int(code), str(sqlstate), str(message)
    return None


def answered(answers: Answers, key: str) -> list[int]:
    """The workers whose answer has ``key`` ("rows", "info"), in order."""
    return [index for index, answer in sorted(answers.items()) if key in answer]


def concatenated(answers: Answers) -> list[list[Any]]:
    """Every worker's rows, worker 0's first."""
    return [list(row) for index in answered(answers, "rows") for row in answers[index]["rows"]]


def first_rows(answers: Answers) -> list[list[Any]] | None:
    """The rows of the lowest worker that gave rows, or None."""
    found = answered(answers, "rows")
    return [list(row) for row in answers[found[0]]["rows"]] if found else None


def summed_stats(answers: Answers, workers: int) -> list[tuple[str, int]]:
    """SHOW STATS of all workers as one table: each name once, in the order the
    workers list them (a command only one worker has run comes after the one
    it follows there), with ``workers`` and ``workers_answered`` last."""
    names: list[str] = []
    totals: dict[str, int] = {}
    for index in answered(answers, "rows"):
        previous: str | None = None
        for name, value in answers[index]["rows"]:
            if name in COUNTED:
                continue
            value = int(value)
            if name not in totals:
                names.insert(names.index(previous) + 1 if previous is not None else 0, name)
                totals[name] = value
            elif name in LARGEST:
                totals[name] = max(totals[name], value)
            else:
                totals[name] += value
            previous = name
    if "statement_latency_avg_us" in totals:  # an average: from the sums, not summed
        relayed = totals.get("commands_relayed", 0)
        totals["statement_latency_avg_us"] = (totals.get("statement_latency_total_us", 0) // relayed
                                              if relayed else 0)
    rows = [(name, totals[name]) for name in names]
    rows.extend([("workers", workers), ("workers_answered", len(answered(answers, "rows")))])
    return rows


def one_info(answers: Answers) -> str | None:
    """The OK text of the workers that carried the command out: theirs when they
    all say the same, else each worker's; None when none did."""
    infos = [(index, str(answers[index]["info"])) for index in answered(answers, "info")]
    if not infos:
        return None
    if len({text for _, text in infos}) == 1:
        return infos[0][1]
    return "; ".join(f"worker {index}: {text}" for index, text in infos)


def owner(client_id: int, workers: int) -> int | None:
    """The worker that gave a client id (worker i of n gives i+1, i+1+n, ...;
    pyproxy.proxy), or None for an id no worker gives."""
    return (client_id - 1) % workers if client_id > 0 and workers > 0 else None

