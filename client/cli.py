"""The ``qsecret`` command: a thin dispatcher over sub-commands.

Each package registers its own sub-commands through the ``qsecret.commands``
entry-point group (see pyproject.toml), so this module never imports the relay
or the KME itself. A sub-command's ``register(subparsers)`` adds its parser and
sets ``func`` to a callable taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from . import __version__

Register = Callable[[argparse._SubParsersAction], None]  # type: ignore[type-arg]

# The commands this distribution ships, each with the entry point (pyproject.toml) that
# registers it. 'qsecret send-file ...' loads that one module instead of reading every
# installed distribution's metadata and importing every package: start-up is on the
# critical path of a transfer. Other names (plugins), no command and top-level --help load
# them all; tests/client/test_startup.py checks this table against the entry points.
BUILTIN_COMMANDS: dict[str, str] = {
    **dict.fromkeys(["init", "chat", "send", "recv", "export", "contacts", "send-file",
                     "receive-files", "transfers"], "client.parsers:register"),
    "demo": "client.demo:register",
    "doctor": "client.doctor:register",
    "eve": "keysource.qkd.cli:register",
    "kme": "keysource.kme.cli:register",
    "relay": "relay.cli:register",
}


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with a built-in ``command``, only the module that registers it."""
    parser = argparse.ArgumentParser(
        prog="qsecret",
        description=(
            "Terminal messenger whose keys mix QKD, ML-KEM and X25519 secrets. "
            "Run 'qsecret COMMAND --help' for each command."
        ),
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
    level = os.environ.get("QSECRET_LOG", "").upper()
    if level:  # e.g. QSECRET_LOG=info: protocol and network events to stderr (never contents)
        import logging

        logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_name(words))
    args = parser.parse_args(words)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except CliError as exc:
        print(f"qsecret {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

