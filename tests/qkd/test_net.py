"""A real two-process link over loopback TCP, with and without `qsecret eve` in the middle."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class Proc:
    """A child Python process whose stdout is JSON lines (read by a thread, never blocking)."""

    def __init__(self, *args: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[dict] = []
        self._queue: queue.Queue[dict | None] = queue.Queue()
        self._err: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            if line.strip():
                record = json.loads(line)
                self.lines.append(record)
                self._queue.put(record)
        self._queue.put(None)

    def _read_err(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self._err.append(line)

    def next_json(self, timeout: float) -> dict:
        try:
            record = self._queue.get(timeout=timeout)
        except queue.Empty:
            record = None
        if record is None:
            raise AssertionError(f"no output within {timeout}s; stderr: {self.stderr()}")
        return record

    def wait(self, timeout: float) -> int:
        code = self.popen.wait(timeout)
        time.sleep(0.1)  # let the reader threads drain the pipes
        return code

    def stderr(self) -> str:
        return "".join(self._err)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


def start(procs: list[Proc], *args: str) -> Proc:
    proc = Proc(*args)
    procs.append(proc)
    return proc


def start_bob(procs: list[Proc], psk: Path, *extra: str) -> int:
    bob = start(procs, "-m", "keysource.qkd", "bob", "--port", "0", "--psk-file", str(psk),
                *extra)
    return int(bob.next_json(30)["listening"])


def reports(proc: Proc) -> list[dict]:
    return [line["report"] for line in proc.lines if "report" in line]


def key_lines(proc: Proc) -> list[dict]:
    return [line for line in proc.lines if "keys" in line]


def test_two_processes_agree_on_every_key(procs: list[Proc], tmp_path: Path) -> None:
    psk = tmp_path / "link.psk"
    port = start_bob(procs, psk)
    alice = start(procs, "-m", "keysource.qkd", "alice", "--port", str(port), "--psk-file",
                  str(psk), "--blocks", "2")
    assert alice.wait(120) == 0, alice.stderr()
    bob = procs[0]
    deadline = time.monotonic() + 30
    while len(reports(bob)) < 2 and time.monotonic() < deadline:
        bob.next_json(deadline - time.monotonic())
    assert [r["aborted"] for r in reports(alice)] == [False, False]
    # same key_IDs and same key digests, batch by batch
    assert key_lines(alice) == key_lines(bob)
    assert sum(k["keys"] for k in key_lines(alice)) > 100
    assert all(r["auth_bits_used"] > 0 for r in reports(alice))


def test_eve_in_the_middle_drives_qber_to_a_quarter_and_the_link_aborts(
        procs: list[Proc], tmp_path: Path) -> None:
    psk = tmp_path / "link.psk"
    bob_port = start_bob(procs, psk, "--frame-bits", "16384")
    eve = start(procs, "-m", "keysource.qkd.cli", "--listen", "127.0.0.1:0", "--upstream",
                f"127.0.0.1:{bob_port}", "--intercept-fraction", "1.0", "--seed", "1")
    eve_port = int(eve.next_json(30)["listening"])
    alice = start(procs, "-m", "keysource.qkd", "alice", "--port", str(eve_port),
                  "--psk-file", str(psk), "--frame-bits", "16384", "--blocks", "3")
    assert alice.wait(120) == 0, alice.stderr()
    got = reports(alice)
    assert len(got) == 3
    for report in got:
        assert report["aborted"] and "QBER" in report["reason"]
        # 2048-bit sample: sigma ~ 0.01, expected 0.25 + e_d / 2
        assert abs(report["qber"] - 0.255) < 0.05
    assert key_lines(alice) == []
    attacked = eve.next_json(10)
    assert attacked["pulses_in"] > 0 and attacked["eve_knows"] > 0


def test_eve_tampering_a_classical_message_costs_one_block(
        procs: list[Proc], tmp_path: Path) -> None:
    psk = tmp_path / "link.psk"
    bob_port = start_bob(procs, psk)
    eve = start(procs, "-m", "keysource.qkd.cli", "--listen", "127.0.0.1:0", "--upstream",
                f"127.0.0.1:{bob_port}", "--tamper-classical", "--tamper-every", "2")
    eve_port = int(eve.next_json(30)["listening"])
    alice = start(procs, "-m", "keysource.qkd", "alice", "--port", str(eve_port),
                  "--psk-file", str(psk), "--blocks", "3")
    assert alice.wait(120) == 0, alice.stderr()
    got = reports(alice)
    assert [r["aborted"] for r in got] == [False, True, False]
    assert "authentication failed" in got[1]["reason"]


def test_mismatched_link_parameters_are_refused_clearly(procs: list[Proc],
                                                        tmp_path: Path) -> None:
    psk = tmp_path / "link.psk"
    port = start_bob(procs, psk, "--fibre-km", "25")
    alice = start(procs, "-m", "keysource.qkd", "alice", "--port", str(port), "--psk-file",
                  str(psk), "--fibre-km", "50", "--blocks", "1")
    assert alice.wait(60) == 2
    assert "different link parameters" in alice.stderr()


def test_eve_command_rejects_bad_arguments() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "client", "eve", "--listen", "nowhere", "--upstream",
         "127.0.0.1:1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "HOST:PORT" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "client", "eve", "--listen", "127.0.0.1:0", "--upstream",
         "127.0.0.1:1", "--intercept-fraction", "1.5"], cwd=ROOT, capture_output=True,
        text=True, timeout=60)
    assert result.returncode == 2 and "between 0 and 1" in result.stderr
