"""The one error the benchmark raises for a run it cannot do.

A workload that raises it is recorded as FAILED with the message as a problem, and the run goes
on with the next one; raised outside a workload it ends the run with the message.
"""

from __future__ import annotations


class BenchError(RuntimeError):
    """Something keeps the benchmark from running; the message says what."""
