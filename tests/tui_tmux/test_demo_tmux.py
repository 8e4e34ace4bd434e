"""``qsecret demo`` in a real terminal: it starts, the command it prints opens bob, and
Ctrl+Q stops every process the demo started."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.processes import port_free
from tests.ports import free_ports
from tests.tui_tmux.tmux import (
    TmuxTerminal,
    alive,
    process_tree,
    processes_mentioning,
    qsecret_command,
)

pytestmark = pytest.mark.slow

PASSPHRASE = "tmux-demo-passphrase"
START_TIMEOUT_S = 90.0  # relay, KME pair with the first QKD blocks, two profiles, greeting
MESSAGE_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0  # the demo stops relay and KMEs (SIGTERM, then SIGKILL after 10 s)
ONLINE = "● online"


@dataclass
class Demo:
    terminal: TmuxTerminal
    directory: Path
    ports: list[int]
    services: dict[int, str]  # pid -> command line of the relay and KME processes


def _wait_until(condition: Callable[[], bool], timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{failure} after {timeout:.0f}s")
        time.sleep(0.1)


@pytest.fixture
def demo_dir(tmp_path: Path) -> Iterator[Path]:
    """The demo's directory; whatever still runs from it at the end is killed (by pid), so a
    failing test leaves no relay or KME behind. Requested before ``terminal``, it is torn
    down after the tmux terminals are closed."""
    directory = tmp_path / "demo"
    yield directory
    for pid in processes_mentioning(str(directory)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _start_demo(terminal: Callable[[str], TmuxTerminal], directory: Path) -> Demo:
    ports = free_ports(3)
    relay_port, port_a, port_b = ports
    alice = terminal("demo").start(
        [*qsecret_command(), "demo", "--dir", str(directory), "--relay-port", str(relay_port),
         "--port-a", str(port_a), "--port-b", str(port_b)],
        env={"QSECRET_PASSPHRASE": PASSPHRASE}, cwd=directory.parent,
    )
    screen = alice.wait_for(lambda s: "Hi Bob!" in s and ONLINE in s, START_TIMEOUT_S,
                            "the greeting and 'online' in alice's TUI")
    assert "@alice" in screen
    # The demo waits for QKD keys before the greeting: its keys are not degraded.
    assert "degraded" not in screen, screen
    # The relay and the KME pair run as children of the demo, on the ports it was given.
    services = {pid: cmd for pid, cmd in process_tree(alice.pane_pid()).items()
                if re.search(r" -m client (relay|kme) ", cmd) and str(directory) in cmd}
    assert sorted(re.search(r" -m client (\w+)", cmd).group(1)  # type: ignore[union-attr]
                  for cmd in services.values()) == ["kme", "relay"], services
    assert not any(port_free(port) for port in ports)
    return Demo(alice, directory, ports, services)


def _assert_all_stopped(demo: Demo, timeout: float = STOP_TIMEOUT_S) -> None:
    _wait_until(lambda: not any(alive(pid, cmd) for pid, cmd in demo.services.items()),
                timeout, "relay or KME still running")
    _wait_until(lambda: all(port_free(port) for port in demo.ports), timeout,
                "the demo's ports are still taken")
    _wait_until(lambda: not processes_mentioning(str(demo.directory)), timeout,
                "a process of the demo is still running")


def test_demo_starts_opens_bob_and_stops_everything_on_quit(
    demo_dir: Path, terminal: Callable[[str], TmuxTerminal]
) -> None:
    demo = _start_demo(terminal, demo_dir)
    alice = demo.terminal

    # The command the demo printed, now under alice's TUI on the normal screen, opens bob.
    printed = alice.tmux("capture-pane", "-p", "-a", "-J", "-t", "main").stdout
    match = re.search(r"^\s*(QSECRET_PASSPHRASE=\S+ .*chat --data \S+)\s*$", printed, re.M)
    assert match, printed
    bob = terminal("bob").start(match.group(1), cwd=demo_dir.parent)
    bob.wait_for(lambda s: "Hi Bob!" in s and ONLINE in s, START_TIMEOUT_S,
                 "the greeting in bob's TUI")
    bob.type_line("hello alice, bob here via the printed command")
    alice.wait_for("bob: hello alice, bob here via the printed command", MESSAGE_TIMEOUT_S,
                   "bob's answer on alice's screen")
    bob.press("C-q")
    assert bob.wait_exit(STOP_TIMEOUT_S) == 0, bob.screen()

    alice.press("C-q")
    assert alice.wait_exit(STOP_TIMEOUT_S) == 0, alice.screen()
    assert "demo stopped: relay and KMEs shut down" in alice.screen()
    _assert_all_stopped(demo)


def test_closing_the_terminal_stops_the_demo_services(
    demo_dir: Path, terminal: Callable[[str], TmuxTerminal]
) -> None:
    demo = _start_demo(terminal, demo_dir)
    # Like closing the terminal window: the demo gets SIGHUP (from tmux and from the
    # hung-up terminal, with SIGCONT). Without care this orphaned the services (a second
    # SIGHUP inside the demo's `finally`) or wedged the demo itself (Textual restarting its
    # driver on the dead terminal), about one run in five.
    demo.terminal.close()
    # ServiceProcess.stop allows 10 s before SIGKILL; a little more is enough here.
    _assert_all_stopped(demo, timeout=12.0)
