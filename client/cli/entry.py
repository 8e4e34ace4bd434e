"""The ``qsecret`` command: a thin dispatcher over sub-commands.

Each package registers its own sub-commands through the ``qsecret.commands``
entry-point group (see pyproject.toml), so this module never imports the relay
or the KME itself. A sub-command's ``register(subparsers)`` adds its parser and
sets ``func`` to a callable taking the parsed namespace and returning an exit code.

Every failure a user can act on (``CliError``, ``MessengerError``, ``TransferError``, a bad
config, a wrong passphrase, an OS error) ends here as one line on standard error and a
non-zero exit status (see ``client.cli.errors``); anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from client import __version__

from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_STATUS_HELP, exit_status, user_message
from .help import HelpFormatter

Register = Callable[[argparse._SubParsersAction], None]  # type: ignore[type-arg]

# The commands this distribution ships, each with the entry point (pyproject.toml) that
# registers it. 'qsecret send-file ...' loads that one module instead of reading every
# installed distribution's metadata and importing every package: start-up is on the
# critical path of a transfer. Other names (plugins), no command and top-level --help load
# them all; tests/client/test_startup.py checks this table against the entry points.
BUILTIN_COMMANDS: dict[str, str] = {
    **dict.fromkeys(["init", "chat", "send", "recv", "export", "contacts", "send-file",
                     "receive-files", "transfers", "backup", "restore", "call", "answer",
                     "group"],
                    "client.cli.parsers:register"),
    "demo": "client.cli.demo:register",
    "doctor": "client.cli.doctor:register",
    "eve": "keysource.qkd.cli:register",
    "kme": "keysource.kme.cli:register",
    "network": "keysource.kme.network_cli:register",
    "relay": "relay.cli:register",
}

# The GIL switch interval (the interpreter's default is 5 ms) for the whole process of these
# commands. 'send-file' reads, seals and hashes its chunks on a worker thread while the main
# thread speaks to the relay; after each block the worker waits for the GIL, up to one
# interval, and a shorter one gets it back sooner (measured when send-file still hashed every
# file before its offer: 256 MiB ~10 % sooner during start-up). It is a process-wide setting,
# so only this entry point sets it, once, before any
# thread starts; library code (the messenger, transfers, the TUI) never touches it, and the
# servers ('relay', 'kme') keep the default.
SWITCH_INTERVAL_S: dict[str, float] = {"send-file": 0.0005}

# The cyclic garbage collector is paused while these commands start: they import and build
# the messenger (~430 modules, ~170 dataclasses; every object made is kept for the life of
# the process), and each collection walked them in vain, ~20 ms of CPU on a transfer's
# clock. It resumes once the messenger is built (``startup_done``, from the command, or at
# the latest when the command returns), with everything made so far frozen out of later
# collections (gc.freeze), so those of the transfer itself do not walk it either (the
# imports leave ~500 unreachable objects, a few hundred KiB: they stay, frozen; a full
# collection to free them would cost ~17 ms).
PAUSE_GC_AT_START = frozenset({"send-file", "receive-files"})
_gc_paused = False


def startup_done() -> None:
    """The command's start-up is over: resume a collector ``main`` paused for it."""
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        gc.freeze()
        gc.enable()


def dump_stacks_on_sigusr1() -> None:
    """``kill -USR1 PID`` prints every thread's stack and every asyncio task's to stderr.

    For a process that will not stop: it says where each thread and task is waiting, and
    the process carries on. A process-wide signal handler, so only this entry point sets it.
    """
    import faulthandler
    import signal

    def dump(signum: int, frame: object) -> None:
        faulthandler.dump_traceback(sys.stderr, all_threads=True)
        import asyncio

        loop = asyncio._get_running_loop()  # set while the main thread runs an event loop
        if loop is not None:
            for task in asyncio.all_tasks(loop):
                print(f"--- {task!r}", file=sys.stderr)
                task.print_stack(file=sys.stderr)
        sys.stderr.flush()

    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, dump)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with a built-in ``command``, only the module that registers it."""
    parser = argparse.ArgumentParser(
        prog="qsecret",
        description=(
            "Terminal messenger whose keys mix QKD, ML-KEM and X25519 secrets. "
            "Run 'qsecret COMMAND --help' for each command.\n\n"
            "Start with 'qsecret demo' (everything on this machine), or: 'qsecret init "
            "--handle NAME', 'qsecret recv' (publishes your prekeys), 'qsecret contacts add "
            "PEER', 'qsecret chat'."
        ),
        epilog=EXIT_STATUS_HELP,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"qsecret {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _registers(command):
        register(subparsers)
    return parser


def _registers(command: str | None) -> list[Register]:
    target = BUILTIN_COMMANDS.get(command or "")
    if target is not None:
        module, _, name = target.partition(":")
        return [getattr(importlib.import_module(module), name)]
    from importlib.metadata import entry_points

    return [entry.load() for entry in sorted(entry_points(group="qsecret.commands"),
                                             key=lambda e: e.name)]


def _command_name(argv: Sequence[str]) -> str | None:
    """The first word that is not an option: the sub-command, if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``qsecret`` command; the exit status (see ``client.cli.errors``)."""
    words = sys.argv[1:] if argv is None else list(argv)
    command = _command_name(words)
    if command in SWITCH_INTERVAL_S:
        sys.setswitchinterval(SWITCH_INTERVAL_S[command])
    global _gc_paused
    if command in PAUSE_GC_AT_START and gc.isenabled():
        gc.disable()
        _gc_paused = True
    dump_stacks_on_sigusr1()
    level = os.environ.get("QSECRET_LOG", "").upper()
    if level:  # e.g. QSECRET_LOG=info: protocol and network events to stderr (never contents)
        import logging

        logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        parser = build_parser(command)
        args = parser.parse_args(words)
        return run(args, parser)
    finally:
        startup_done()


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Call the parsed command; a failure the user can act on becomes one line and status 2."""
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_FAILED
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            raise
        print(f"qsecret {args.command}: {message}", file=sys.stderr)
        return exit_status(exc)
