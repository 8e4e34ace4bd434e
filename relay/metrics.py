"""The relay's metrics, exposed in the Prometheus text format by ``prometheus_client``.

Hot paths only bump plain numbers: :meth:`Metrics.count` adds to a dict entry and
:meth:`LatencyHistogram.observe` does a bisect and an increment (prometheus_client's own
metric objects take a lock per update). At scrape time :meth:`Metrics.collect` turns them
into metric families and ``prometheus_client`` writes the exposition. Each relay has its
own registry (nothing process-global), so several relays in one test process never mix.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# Seconds, from a live delivery's fraction of a millisecond to an offline recipient's hours.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 300.0, 3600.0)
# A commit is an fsync or two: microseconds on tmpfs, tens of milliseconds on a slow disk.
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LatencyHistogram:
    """A histogram an operator reads p99 from, cheap enough for the relay's hot path.

    Observed from one thread each (the event loop, or the store's writer thread).
    """

    def __init__(self, name: str, text: str, bounds: Sequence[float]) -> None:
        self.name = name
        self.text = text
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def family(self) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            total += count
            buckets.append((repr(bound), total))
        buckets.append(("+Inf", total + self.counts[-1]))
        return HistogramMetricFamily(self.name, self.text, buckets=buckets, sum_value=self.sum)


class _Scrape(Collector):
    """What the registry calls at scrape time (``Metrics.describe`` means something else)."""

    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self.collect = collect  # type: ignore[method-assign]


class Metrics:
    """Counters (labelled by one label each), gauges read at scrape time, histograms."""

    def __init__(self) -> None:
        self.counters: Counter[tuple[str, str, str]] = Counter()
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.read_counters: dict[str, tuple[str, Callable[[], float]]] = {}
        self.histograms: dict[str, LatencyHistogram] = {}
        self.help: dict[str, str] = {}
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Scrape(self.collect))

    def count(self, name: str, label: str = "", value: str = "", amount: int = 1) -> None:
        self.counters[(name, label, value)] += amount

    def describe(self, name: str, text: str) -> None:
        self.help[name] = text

    def gauge(self, name: str, text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (text, read)

    def counter_from(self, name: str, text: str, read: Callable[[], float]) -> None:
        """A counter kept elsewhere (a plain int on a hot path), read at scrape time."""
        self.read_counters[name] = (text, read)

    def histogram(self, name: str, text: str,
                  bounds: Sequence[float] = LATENCY_BUCKETS) -> LatencyHistogram:
        histogram = LatencyHistogram(name, text, bounds)
        self.histograms[name] = histogram
        return histogram

    def collect(self) -> Iterator[Metric]:
        rows: dict[str, list[tuple[str, str, int]]] = {name: [] for name in self.help}
        for (name, label, value), amount in self.counters.items():
            rows.setdefault(name, []).append((label, value, amount))
        for name in sorted(rows):
            labels = sorted({label for label, _, _ in rows[name] if label})
            family = CounterMetricFamily(name, self.help.get(name, name), labels=labels)
            if not rows[name]:
                family.add_metric([], 0)
            for label, value, amount in sorted(rows[name]):
                family.add_metric([value] if label else [], amount)
            yield family
        for name, (text, read) in sorted(self.read_counters.items()):
            yield CounterMetricFamily(name, text, value=read())
        for name, (text, read) in sorted(self.gauges.items()):
            yield GaugeMetricFamily(name, text, value=read())
        for _, histogram in sorted(self.histograms.items()):
            yield histogram.family()

    def render(self) -> str:
        return generate_latest(self._registry).decode()
