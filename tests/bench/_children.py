"""Child processes for the end-to-end benchmarks: timestamped output, exact peak RSS, cleanup.

Each child runs in its own session so stopping it stops everything it started. Its peak
resident set is ``VmHWM`` from ``/proc/PID/status`` (the kernel's high-water mark of the
child's own address space), read every few milliseconds until it exits; being a high-water
mark, the last reading holds every earlier peak. (``wait4``'s ``ru_maxrss`` is no use here: it
keeps the maximum across ``exec``, so a child forked from the benchmark inherits the
benchmark's RSS as a floor.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

TAIL = 25
RSS_POLL_S = 0.005


class ChildError(Exception):
    """A child failed, timed out or exited early; the message carries its output's tail."""


@dataclass(frozen=True)
class Line:
    at: float  # time.perf_counter() when the line was read
    stream: str
    text: str


class Child:
    """One subprocess whose stdout/stderr lines are collected with their arrival time."""

    def __init__(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.lines: list[Line] = []
        self._cond = threading.Condition()
        self._open_streams = 2
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
            cwd=cwd, start_new_session=True,
        )
        self.peak_rss_kib: int | None = None
        self.cpu_seconds: float | None = None  # user + system, all threads, last reading
        threading.Thread(target=self._watch_rss, daemon=True, name=f"{name}-rss").start()
        for stream_name in ("stdout", "stderr"):
            threading.Thread(target=self._pump, args=(stream_name,), daemon=True,
                             name=f"{name}-{stream_name}").start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _pump(self, stream_name: str) -> None:
        stream = getattr(self.process, stream_name)
        for text in stream:
            with self._cond:
                self.lines.append(Line(time.perf_counter(), stream_name, text.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._open_streams -= 1
            self._cond.notify_all()

    def _watch_rss(self) -> None:
        """Poll VmHWM and CPU time until the child is gone (its status then lacks Vm* lines)."""
        status = Path(f"/proc/{self.pid}/status")
        while self.process.returncode is None:
            try:
                text = status.read_text()
                cpu = cpu_seconds(self.pid)
            except OSError:
                return
            if cpu is not None:
                self.cpu_seconds = cpu
            for row in text.splitlines():
                if row.startswith("VmHWM:"):
                    self.peak_rss_kib = max(self.peak_rss_kib or 0, int(row.split()[1]))
                    break
            else:
                return  # a zombie: its memory is gone, the last reading stands
            time.sleep(RSS_POLL_S)

    def wait_line(self, match: Callable[[str], bool], timeout: float,
                  stream: str = "stdout") -> Line:
        """The first line on ``stream`` for which ``match`` is true; raise if it never comes."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if line.stream == stream and match(line.text):
                        return line
                seen = len(self.lines)
                if self._open_streams == 0:
                    raise ChildError(f"{self.name} exited without the expected output"
                                     f"{self.tail()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChildError(f"{self.name}: expected output not seen within "
                                     f"{timeout:.0f}s{self.tail()}")
                self._cond.wait(min(remaining, 0.5))

    def _reap(self) -> bool:
        """Reap the child if it has exited, recording its exit code."""
        if self.process.returncode is not None:
            return True
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid != self.pid:
            return False
        self.process.returncode = os.waitstatus_to_exitcode(status)
        return True

    def wait_exit(self, timeout: float) -> int:
        """Reap the child and return its exit code; bounded."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        while not self._reap():
            if time.monotonic() >= deadline:
                raise ChildError(f"{self.name} did not exit within {timeout:.0f}s{self.tail()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        with self._cond:  # let the pumps drain what the child wrote last (bounded)
            self._cond.wait_for(lambda: self._open_streams == 0, timeout=5)
        assert self.process.returncode is not None
        return self.process.returncode

    @property
    def running(self) -> bool:
        return not self._reap()

    @property
    def peak_rss_mib(self) -> float | None:
        return None if self.peak_rss_kib is None else round(self.peak_rss_kib / 1024, 1)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the child's session, SIGKILL it if it lingers, and reap it."""
        if self.process.returncode is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass  # already gone; wait_exit reaps it
            try:
                self.wait_exit(timeout)
                return
            except ChildError:
                continue

    def tail(self) -> str:
        with self._cond:
            lines = [f"  [{line.stream}] {line.text}" for line in self.lines[-TAIL:]]
        return (":\n" + "\n".join(lines)) if lines else " (no output)"


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds process ``pid`` has used so far (None if it is a zombie)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    if fields[0] == "Z":
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def wait_listening(port: int, timeout: float, child: Child | None = None) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if child is not None and not child.running:
            raise ChildError(f"{child.name} exited before listening on {port}{child.tail()}")
        if time.monotonic() >= deadline:
            where = child.tail() if child else ""
            raise ChildError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s{where}")
        time.sleep(0.05)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        entries = list(fd_dir.iterdir())
    except OSError:
        return inodes
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def connected_to(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds an established TCP connection to local port ``port``."""
    inodes = _socket_inodes(pid)
    if not inodes:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                return True
    return False


def wait_connected(child: Child, port: int, timeout: float) -> None:
    """Block until ``child`` has connected to its server on ``port`` (bounded)."""
    deadline = time.monotonic() + timeout
    while not connected_to(child.pid, port):
        if not child.running:
            raise ChildError(f"{child.name} exited before connecting to port {port}"
                             f"{child.tail()}")
        if time.monotonic() >= deadline:
            raise ChildError(f"{child.name} did not connect to port {port} within "
                             f"{timeout:.0f}s{child.tail()}")
        time.sleep(0.02)
