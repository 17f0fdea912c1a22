"""``/metrics`` with ``[proxy] workers``: the supervisor serves the page, summing its workers'.

Each worker keeps its own figures (pyproxy.metrics reads them off its own pools and counters).
On a scrape the supervisor asks every worker for its page over the control channel, adds up
what adds up (counters, histograms, connection counts, budget shares, memory) and keeps the
largest (or, for a start time, the smallest) of what does not (a target's state, pause, the
version), so the page reads as one pyproxy's. ``pyproxy_workers`` and
``pyproxy_workers_answered`` say how many workers there are and how many answered in time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.web import resource, server

from pyproxy.metrics import PREFIX

#: Families whose samples are states or settings, not amounts: the largest worker's stands.
#: A failover is seen by every worker's own probes: counted once, as SHOW STATS does.
LARGEST = {f"{PREFIX}{name}" for name in (
    "info", "paused", "debug_statements_seconds", "target_state", "target_state_seconds",
    "target_writer", "process_max_fds", "failovers")}
SMALLEST = {f"{PREFIX}process_start_time_seconds"}
SCRAPE_TIMEOUT = 5.0


def merge(pages: Iterable[str]) -> list[Metric]:
    """The workers' pages as one: samples with the same name and labels combined."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for page in pages:
        for family in text_string_to_metric_families(page):
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            samples = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in samples:
                    samples[key] = sample.value
                elif family.name in LARGEST:
                    samples[key] = max(samples[key], sample.value)
                elif family.name in SMALLEST or sample.name.endswith("_created"):
                    samples[key] = min(samples[key], sample.value)
                else:
                    samples[key] += sample.value
    out = []
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
        out.append(family)
    return out


class _Fixed:
    """A collector of the merged families, for prometheus_client's text format."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def render(pages: list[str], workers: int) -> bytes:
    families = merge(pages)
    count = GaugeMetricFamily(f"{PREFIX}workers", "Worker processes ([proxy] workers).",
                              value=workers)
    answered = GaugeMetricFamily(f"{PREFIX}workers_answered",
                                 "Workers whose figures are in this page.", value=len(pages))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([*families, count, answered]))  # type: ignore[arg-type]
    return generate_latest(registry)


class WorkersMetrics(resource.Resource):
    """``/metrics`` on the supervisor: asks ``ask()`` for every worker's page."""

    isLeaf = True

    def __init__(self, ask: Callable[[float], defer.Deferred[list[str]]], workers: int) -> None:
        super().__init__()
        self.ask = ask
        self.workers = workers

    def render_GET(self, request: Any) -> Any:
        def done(pages: list[str]) -> None:
            request.setHeader(b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
            request.write(render(pages, self.workers))
            request.finish()

        def failed(failure: Any) -> None:
            request.setResponseCode(500)
            request.write(f"scrape failed: {failure.getErrorMessage()}\n".encode())
            request.finish()

        self.ask(SCRAPE_TIMEOUT).addCallbacks(done, failed)
        return server.NOT_DONE_YET


def site(ask: Callable[[float], defer.Deferred[list[str]]], workers: int) -> server.Site:
    from pyproxy.metrics import MetricsSite  # noqa: PLC0415

    root = resource.Resource()
    root.putChild(b"metrics", WorkersMetrics(ask, workers))
    return MetricsSite(root)
