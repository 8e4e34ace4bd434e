"""A private tmux server holding one terminal of a fixed size, for driving the real TUI.

Each ``TmuxTerminal`` uses its own socket (``tmux -L``), so tests never touch the user's
tmux sessions nor each other's. ``remain-on-exit`` keeps a finished pane around, so the
test can still read the last screen after the program has exited.
"""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

SESSION = "main"
POLL_S = 0.1


def qsecret_command() -> list[str]:
    """The installed ``qsecret`` console script beside this interpreter (as a user runs it)."""
    script = Path(sys.executable).parent / "qsecret"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "client"]


class TmuxTerminal:
    def __init__(self, binary: str, workdir: Path, name: str) -> None:
        self.binary = binary
        self.name = name
        self.socket = f"qsecret-test-{os.getpid()}-{name}-{secrets.token_hex(4)}"
        self.config = workdir / f"tmux-{name}.conf"
        self.status_file = workdir / f"tmux-{name}.status"
        self.config.write_text(
            "set -g remain-on-exit on\n"
            "set -g default-shell /bin/sh\n"
            "set -g history-limit 2000\n"
        )
        # A tmux inside tmux would otherwise talk to the outer server.
        self.env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, "-u", "-L", self.socket, "-f", str(self.config), *args],
            capture_output=True, text=True, env=self.env, timeout=30,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def start(self, command: Sequence[str] | str, *, env: Mapping[str, str] | None = None,
              cwd: Path, size: tuple[int, int] = (150, 40)) -> TmuxTerminal:
        """Run ``command`` (an argv, or a shell command line) in a detached session of
        ``size`` columns x rows. The shell around it records the exit status in a file:
        tmux's own ``pane_dead_status`` is unreliable (tmux 3.3a misses SIGCHLD now and
        then while clients poll it, and the status then never arrives)."""
        line = command if isinstance(command, str) else shlex.join(command)
        status = shlex.quote(str(self.status_file))
        partial = shlex.quote(f"{self.status_file}.part")
        wrapped = f"{line}; echo $? > {partial} && mv {partial} {status}"
        env_args = [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]
        self.tmux("new-session", "-d", "-s", SESSION, "-x", str(size[0]), "-y", str(size[1]),
                  "-c", str(cwd), *env_args, wrapped)
        return self

    def screen(self) -> str:
        """The visible screen as plain text."""
        return self.tmux("capture-pane", "-p", "-t", SESSION).stdout

    def wait_for(self, condition: Callable[[str], bool] | str, timeout: float,
                 what: str = "") -> str:
        """Poll the screen until ``condition`` (or the text) holds; fail with the last screen."""
        test = (lambda screen: condition in screen) if isinstance(condition, str) else condition
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if test(screen):
                return screen
            if self.exit_status() is not None:
                raise AssertionError(f"{self.name}: the program exited while waiting for "
                                     f"{what or condition!r}; last screen:\n{screen}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {what or condition!r} not on screen within "
                                     f"{timeout:.0f}s; last screen:\n{screen}")
            time.sleep(POLL_S)

    def type_line(self, text: str) -> None:
        """Type ``text`` literally (no key-name parsing), then press Enter."""
        self.tmux("send-keys", "-t", SESSION, "-l", text)
        self.tmux("send-keys", "-t", SESSION, "Enter")

    def press(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", SESSION, *keys)

    def display(self, fmt: str) -> str:
        """Expand a tmux format (e.g. ``#{pane_pid}``) for the pane."""
        return self.tmux("display-message", "-p", "-t", SESSION, fmt).stdout.strip()

    def pane_pid(self) -> int:
        return int(self.display("#{pane_pid}"))

    def exit_status(self) -> int | None:
        """The program's exit status once it has exited, else None."""
        try:
            return int(self.status_file.read_text())
        except FileNotFoundError:
            return None

    def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (status := self.exit_status()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: still running {timeout:.0f}s after quitting; "
                                     f"screen:\n{self.screen()}")
            time.sleep(POLL_S)
        return status

    def close(self) -> None:
        """Kill the private server and whatever still runs in it; remove its socket file
        (tmux leaves it behind in /tmp/tmux-UID after kill-server)."""
        socket_path = self.tmux("display-message", "-p", "#{socket_path}", check=False)
        self.tmux("kill-server", check=False)
        if socket_path.returncode == 0 and socket_path.stdout.strip():
            Path(socket_path.stdout.strip()).unlink(missing_ok=True)


def _processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, full command line) of every process (POSIX ``ps``, no truncation)."""
    listing = subprocess.run(["ps", "-ww", "-A", "-o", "pid=,ppid=,args="],
                             capture_output=True, text=True, check=True).stdout
    rows = []
    for line in listing.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2:
            rows.append((int(parts[0]), int(parts[1]), parts[2] if len(parts) > 2 else ""))
    return rows


def process_tree(root: int) -> dict[int, str]:
    """``root`` and all its descendants as {pid: command line}."""
    rows = _processes()
    children: dict[int, list[int]] = {}
    for pid, ppid, _ in rows:
        children.setdefault(ppid, []).append(pid)
    commands = {pid: cmd for pid, _, cmd in rows}
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in commands:
            tree[pid] = commands[pid]
            todo.extend(children.get(pid, []))
    return tree


def processes_mentioning(text: str) -> dict[int, str]:
    """Processes whose command line contains ``text`` (e.g. a test's private directory),
    leaving out tmux itself, whose command line names the program it was asked to run."""
    return {pid: cmd for pid, _, cmd in _processes()
            if text in cmd and "tmux" not in Path(cmd.split(None, 1)[0]).name}


def alive(pid: int, command: str) -> bool:
    """Is this pid still the process we saw (not a zombie, not a reused pid)?"""
    listing = subprocess.run(["ps", "-ww", "-o", "stat=,args=", "-p", str(pid)],
                             capture_output=True, text=True).stdout.strip()
    if not listing:
        return False
    state, _, args = listing.partition(" ")
    return not state.startswith("Z") and args.strip() == command.strip()
