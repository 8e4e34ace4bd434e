"""A real redis-server for tests: started on a free loopback port in a temp dir, stopped after.

Missing redis-server skips the test with one line of reason; ``QSECRET_REQUIRE_REDIS=1``
(set by .ci/run, which installs redis-server) turns that skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.ports import free_port

REQUIRE_ENV = "QSECRET_REQUIRE_REDIS"


def redis_server_binary() -> str:
    """The redis-server to run, or skip (fail under QSECRET_REQUIRE_REDIS=1) without one."""
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if path is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_ENV}=1")
        pytest.skip(reason)
    return path


@dataclass
class RedisServer:
    """One redis-server process; ``restart()`` keeps its directory (and so its AOF)."""

    directory: Path
    fsync: str = "always"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = redis_server_binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        # A port taken between the probe and the bind makes redis exit: pick again.
        for _ in range(5):
            port = self.port or free_port()
            logfile = self.directory / f"redis-{port}-{len(self.log)}.log"
            self.log.append(logfile)
            with logfile.open("wb") as out:
                proc = subprocess.Popen(
                    [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir",
                     str(self.directory), "--appendonly", "yes", "--appendfsync", self.fsync,
                     "--save", "", "--protected-mode", "no", "--daemonize", "no"],
                    stdout=out, stderr=subprocess.STDOUT)
            if self._wait_ready(proc, port, logfile):
                self.proc, self.port = proc, port
                return self
            if self.port:  # a restart must keep its port
                break
        raise RuntimeError("redis-server did not start:\n" + logfile.read_text())

    @staticmethod
    def _wait_ready(proc: subprocess.Popen[bytes], port: int, logfile: Path) -> bool:
        """Ready once it answers PING (its log line says so too, but the socket is the test)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    reply = sock.recv(64)
                if reply.startswith(b"+PONG"):
                    return True
                # -LOADING: still reading its AOF; ask again once the socket is closed
            except OSError:
                pass
            time.sleep(0.02)  # polling a child's readiness, not synchronising test steps
        proc.kill()
        proc.wait(10)
        return False

    def kill9(self) -> None:
        """Crash it: nothing flushed beyond what appendfsync already wrote."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
