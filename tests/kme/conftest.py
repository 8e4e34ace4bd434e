"""Helpers for the KME tests: real ``qsecret kme`` processes on 127.0.0.1, real mTLS."""

from __future__ import annotations

import os
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from keysource.kme.client import SaeClient
from keysource.kme.http11 import AsyncHttpClient, PrivateLoop, Response
from keysource.kme.pki import Pki
from keysource.kme.pool import KeyPool
from keysource.kme.runtime import KME_A, KME_B, SAE_A, SAE_B, pool_path

READY = re.compile(r"^ready (\S+) (\S+)")
START_TIMEOUT_S = 30.0


def random_batch(count: int) -> list[tuple[str, bytes]]:
    return [(str(uuid.uuid4()), os.urandom(32)) for _ in range(count)]


def qsecret_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "client", *args]


@dataclass
class KmeProcess:
    """A running ``qsecret kme ...`` process with its output collected line by line."""

    proc: subprocess.Popen[str]
    urls: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def start_reader(self) -> None:
        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self._queue.put(line.rstrip("\n"))
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(
        self, pattern: str, timeout_s: float = START_TIMEOUT_S, *, start: int = 0
    ) -> re.Match[str]:
        """Wait for an output line matching ``pattern`` (searching from line ``start``)."""
        regex = re.compile(pattern)
        for line in self.lines[start:]:
            if m := regex.search(line):
                return m
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"process exited ({self.proc.poll()}) before {pattern!r}:\n"
                    + "\n".join(self.lines[-30:])
                )
            self.lines.append(line)
            if m := READY.match(line):
                self.urls[m.group(1)] = m.group(2)
            if m := regex.search(line):
                return m
        raise AssertionError(f"timed out waiting for {pattern!r}:\n" + "\n".join(self.lines[-30:]))

    def drain(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is None:
                return
            self.lines.append(line)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.drain()
        return self.proc.returncode


def start_kme(args: Sequence[str], *, ready_count: int) -> KmeProcess:
    proc = subprocess.Popen(
        qsecret_cmd("kme", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    kme = KmeProcess(proc)
    kme.start_reader()
    try:
        for _ in range(ready_count):
            kme.wait_for(r"^ready ", start=len(kme.lines))
    except BaseException:
        kme.stop(signal.SIGKILL)
        raise
    return kme


class RawHttp:
    """Requests the SaeClient would never send, over the project's one HTTP client."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext) -> None:
        self._loop = PrivateLoop()
        self._http = AsyncHttpClient(url, ssl_context=ssl_context, timeout=10)

    def get(self, path: str, params: dict[str, str] | None = None) -> Response:
        query = f"?{urlencode(params)}" if params else ""
        return self._loop.run(self._http.request("GET", path + query))

    def post(self, path: str, *, json: Any = None, content: bytes | None = None,
             headers: dict[str, str] | None = None) -> Response:
        return self._loop.run(
            self._http.request("POST", path, json_body=json, content=content, headers=headers))

    def close(self) -> None:
        try:
            self._loop.run(self._http.aclose())
        finally:
            self._loop.close()

    def __enter__(self) -> RawHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Pair:
    """A ``qsecret kme pair --link none`` process; tests fill both pools with the same keys."""

    data: Path
    process: KmeProcess

    @property
    def pki(self) -> Pki:
        return Pki(self.data / "pki")

    @property
    def url_a(self) -> str:
        return self.process.urls[KME_A]

    @property
    def url_b(self) -> str:
        return self.process.urls[KME_B]

    def fill(self, count: int) -> list[tuple[str, bytes]]:
        """Put the same fresh keys into both pools, as the QKD link would."""
        batch = random_batch(count)
        for kme_id in (KME_A, KME_B):
            with KeyPool(pool_path(self.data, kme_id)) as pool:
                pool.add_keys(batch)
        return batch

    def client(self, url: str, sae: str, **kwargs: object) -> SaeClient:
        paths = self.pki.sae(sae)
        return SaeClient(url, ca=self.pki.ca_cert, cert=paths.cert, key=paths.key, **kwargs)

    def alice(self) -> SaeClient:
        """SAE alice at KME A."""
        return self.client(self.url_a, SAE_A)

    def bob(self) -> SaeClient:
        """SAE bob at KME B."""
        return self.client(self.url_b, SAE_B)


def start_pair(data: Path, *extra: str) -> Pair:
    process = start_kme(
        ["pair", "--data", str(data), "--link", "none", "--port-a", "0", "--port-b", "0",
         "--status-interval", "0", *extra],
        ready_count=2,
    )
    return Pair(data, process)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    running = start_pair(tmp_path_factory.mktemp("kme-pair"), "--max-key-per-request", "16")
    try:
        yield running
    finally:
        running.process.stop()
