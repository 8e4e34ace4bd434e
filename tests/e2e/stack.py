"""A real local deployment for end-to-end tests: relay and KME pair processes, two profiles.

Everything listens on 127.0.0.1 ports picked at start; the CLI is run as subprocesses
(``python -m client.cli``) exactly as a user would run ``qsecret``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from client.processes import ServiceProcess
from tests.ports import free_port

PASSPHRASE = "e2e-passphrase-123"
KME_B_USERS = ("bob", "dave", "frank")
UNREACHABLE_KME = "http://127.0.0.1:9"  # nothing listens: a KME request fails at once
# Free keys each pool holds before a stack built by start_stack is used: more than any test
# module that shares one stack takes, so no test depends on how fast the emulated link (a
# low-priority thread) refills the pools on a busy machine. The first block yields ~150.
KEYS_BEFORE_USE = 100


@dataclass
class Stack:
    root: Path
    relay_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)  # the relay's --metrics-listen
    port_a: int = field(default_factory=free_port)
    port_b: int = field(default_factory=free_port)
    kme_args: tuple[str, ...] = ()
    relay_scheme: str = "ws"  # "wss" for a relay with TLS
    relay_args: tuple[str, ...] = ()
    relay: ServiceProcess | None = None
    kme: ServiceProcess | None = None
    keys_before_use: int = 0  # start_kme returns once both pools hold this many free keys

    @property
    def relay_url(self) -> str:
        return f"{self.relay_scheme}://127.0.0.1:{self.relay_port}"

    def start_relay(self) -> None:
        self.relay = ServiceProcess(
            "relay",
            ["relay", "--port", str(self.relay_port), "--data", str(self.root / "relay"),
             "--redeliver-after", "2",
             "--metrics-listen", f"127.0.0.1:{self.metrics_port}", *self.relay_args],
            log=self.root / "relay.log",
        ).start()
        self.relay.wait_for("relay listening")

    def restart_relay(self, *extra: str) -> None:
        """Stop the relay and start it again on the same port and data, with ``extra`` flags."""
        if self.relay is not None:
            self.relay.stop()
        self.relay_args = extra
        self.start_relay()

    def start_kme(self, *extra: str) -> None:
        self.kme = ServiceProcess(
            "kme",
            ["kme", "pair", "--data", str(self.root / "kme"), "--port-a", str(self.port_a),
             "--port-b", str(self.port_b), "--status-interval", "0", *self.kme_args, *extra,
             *(["--keys-ready", str(self.keys_before_use)] if self.keys_before_use else [])],
            log=self.root / "kme.log",
        ).start()
        self.kme.wait_for("ready kme-bob", timeout=60)
        if self.keys_before_use:
            self.kme.wait_for("keys ready", timeout=300)

    def stop(self) -> None:
        for service in (self.relay, self.kme):
            if service is not None:
                service.stop()

    def profile(self, handle: str) -> Path:
        return self.root / handle

    def init(self, handle: str, *extra: str) -> None:
        """Create a profile; bob's and dave's SAEs hang off KME B, everyone else's off KME A.

        (Two SAEs of one conversation must sit at the two ends of the link: the KME pair
        binds every key to a master at one KME and a slave at the other.)
        """
        port = self.port_b if handle in KME_B_USERS else self.port_a
        sae = f"sae-{handle}"
        result = self.cli(handle, "init", "--handle", handle, "--sae-id", sae,
                          "--kme", f"https://127.0.0.1:{port}",
                          "--kme-pki", str(self.root / "kme" / "pki"), *extra, check=True)
        assert "created profile" in result.stdout

    def cli(self, handle: str | None, *args: str, stdin: str | None = None,
            check: bool = False, passphrase: str = PASSPHRASE,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "client", *args]
        if handle is not None:
            command += ["--data", str(self.profile(handle)), "--relay", self.relay_url]
        env = {**os.environ, "QSECRET_PASSPHRASE": passphrase}
        result = subprocess.run(command, input=stdin, capture_output=True, text=True,
                                env=env, timeout=timeout)
        if check:
            assert result.returncode == 0, f"{args}: {result.stderr}\n{result.stdout}"
        return result

    def history(self, handle: str, peer: str) -> list[dict[str, str]]:
        result = self.cli(handle, "export", peer, "--json", check=True)
        return list(json.loads(result.stdout))


def _pools_filled_by_hand(kme_args: tuple[str, ...]) -> bool:
    """``--link none``: no link fills the pools; the test puts keys there itself."""
    return any((flag, value) == ("--link", "none") or flag == "--link=none"
               for flag, value in pairwise((*kme_args, "")))


def start_stack(root: Path, *kme_args: str, users: tuple[str, ...] = ("alice", "bob")) -> Stack:
    """Relay, KME pair and profiles; every user but bob has added bob as a contact.

    Unless the pools are filled by hand (``--link none``), the link has put KEYS_BEFORE_USE
    keys in both pools first: a contact added with empty pools would make a degraded session.
    """
    stack = Stack(root, kme_args=kme_args,
                  keys_before_use=0 if _pools_filled_by_hand(kme_args) else KEYS_BEFORE_USE)
    try:
        stack.start_relay()
        stack.start_kme()
        for handle in users:
            stack.init(handle)
        # bob logs in once so his prekeys are on the relay; the others then add him.
        stack.cli("bob", "recv", check=True)
        for handle in users:
            if handle != "bob":
                stack.cli(handle, "contacts", "add", "bob", check=True)
    except BaseException:
        stack.stop()
        raise
    return stack


@contextlib.contextmanager
def relay_with_alice(root: Path) -> Iterator[Stack]:
    """A real relay and one profile, alice (her KME unreachable), who has logged in once:
    enough for the CLI's failure paths."""
    stack = Stack(root)
    stack.start_relay()
    try:
        stack.cli("alice", "init", "--handle", "alice", "--kme", UNREACHABLE_KME, check=True)
        stack.cli("alice", "recv", check=True)
        yield stack
    finally:
        stack.stop()


def one_line_failure(result: subprocess.CompletedProcess[str], command: str) -> str:
    """The single line a failed ``qsecret COMMAND`` printed on standard error."""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"qsecret {command}: "), lines[0]
    return lines[0]
