"""Starting and stopping the local services the demo (and the end-to-end tests) need."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path


class ServiceError(Exception):
    """A service did not start; the message carries the tail of its output."""


class ServiceProcess:
    """``qsecret <args>`` as a child process whose output lines we can wait for."""

    def __init__(self, name: str, args: Sequence[str], *, log: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = [sys.executable, "-m", "client", *args]
        self.log = log
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> ServiceProcess:
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=self.env, start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True, name=f"{self.name}-output").start()
        return self

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        sink = self.log.open("a") if self.log else None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line.rstrip("\n"))
            if sink:
                sink.write(line)
                sink.flush()
        self._queue.put(None)
        if sink:
            sink.close()

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        """Block until an output line contains ``text``; raise with the output if it dies."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServiceError(f"{self.name} did not print {text!r} within {timeout:.0f}s"
                                   f"{self._tail()}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise ServiceError(f"{self.name} exited (status {self.process.wait()})"  # type: ignore[union-attr]
                                   f"{self._tail()}")
            if text in line:
                return line

    def _tail(self) -> str:
        tail = "\n".join(self.lines[-15:])
        return f":\n{tail}" if tail else ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds."""
        if not self.running:
            return
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL at once (crash tests)."""
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def terminate_all(services: Sequence[ServiceProcess]) -> list[ServiceProcess]:
    """SIGTERM to every running service, without waiting (safe in a signal handler, and
    again later); returns the ones that were running."""
    running = [s for s in services if s.running]
    for service in running:
        assert service.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.process.pid, signal.SIGTERM)
    return running


def stop_all(services: Sequence[ServiceProcess], timeout: float = 10.0) -> None:
    """Stop several services at once: SIGTERM to all first, then wait for them together
    (at most ``timeout`` in all), then SIGKILL whoever is left. One after the other, a busy
    machine would make the last wait for the sum of everyone's shutdown."""
    running = terminate_all(services)
    deadline = time.monotonic() + timeout
    for service in running:
        assert service.process is not None
        try:
            service.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait()


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
