"""Small helpers shared by the benchmarks: timing with medians, and JSON output."""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def rate(op: Callable[[], object], *, seconds: float, rounds: int) -> float:
    """Median operations per second over ``rounds`` time-boxed rounds (at least one op each)."""
    results = []
    for _ in range(rounds):
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            op()
            count += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        results.append(count / (now - start))
    return statistics.median(results)


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {path}")


def start_server(cmd: list[str], pattern: str) -> tuple[subprocess.Popen[str], int]:
    """Start a server process and read its port from the first line starting with
    ``pattern`` (it ends with the port, or a URL ending with it); 30 s at most."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(pattern):
            return proc, int(line.strip().rstrip("/").rsplit(":", 1)[-1].split()[-1])
    proc.kill()
    raise RuntimeError(f"server did not start: {cmd}")
