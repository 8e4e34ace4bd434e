"""The ``qsecret`` command: a thin dispatcher over sub-commands.

Each package registers its own sub-commands through the ``qsecret.commands``
entry-point group (see pyproject.toml), so this module never imports the relay
or the KME itself. A sub-command's ``register(subparsers)`` adds its parser and
sets ``func`` to a callable taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from . import __version__


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qsecret",
        description=(
            "Terminal messenger whose keys mix QKD, ML-KEM and X25519 secrets. "
            "Run 'qsecret COMMAND --help' for each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"qsecret {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in sorted(entry_points(group="qsecret.commands"), key=lambda e: e.name):
        entry.load()(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    level = os.environ.get("QSECRET_LOG", "").upper()
    if level:  # e.g. QSECRET_LOG=info: protocol and network events to stderr (never contents)
        logging.basicConfig(level=getattr(logging, level, logging.INFO), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
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

