"""Prometheus text exposition for the relay, without a client library."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable


class Metrics:
    """Counters (labelled by one label each) and gauges read at scrape time."""

    def __init__(self) -> None:
        self.counters: Counter[tuple[str, str, str]] = Counter()
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.read_counters: dict[str, tuple[str, Callable[[], float]]] = {}
        self.help: dict[str, str] = {}

    def count(self, name: str, label: str = "", value: str = "", amount: int = 1) -> None:
        self.counters[(name, label, value)] += amount

    def describe(self, name: str, text: str) -> None:
        self.help[name] = text

    def gauge(self, name: str, text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (text, read)

    def counter_from(self, name: str, text: str, read: Callable[[], float]) -> None:
        """A counter kept elsewhere (a plain int on a hot path), read at scrape time."""
        self.read_counters[name] = (text, read)

    def render(self) -> str:
        lines: list[str] = []
        names = sorted({key[0] for key in self.counters} | set(self.help))
        for name in names:
            lines.append(f"# HELP {name} {self.help.get(name, name)}")
            lines.append(f"# TYPE {name} counter")
            rows = sorted((k, v) for k, v in self.counters.items() if k[0] == name)
            if not rows:
                lines.append(f"{name} 0")
            for (_, label, value), amount in rows:
                labels = f'{{{label}="{value}"}}' if label else ""
                lines.append(f"{name}{labels} {amount}")
        for kind, table in (("counter", self.read_counters), ("gauge", self.gauges)):
            for name, (text, read) in sorted(table.items()):
                lines.append(f"# HELP {name} {text}")
                lines.append(f"# TYPE {name} {kind}")
                lines.append(f"{name} {read()}")
        return "\n".join(lines) + "\n"
