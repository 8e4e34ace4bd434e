"""``python -m relay`` = ``qsecret relay`` (handy where the console script is not on PATH)."""

from __future__ import annotations

import argparse
import sys

from relay.cli import register


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m relay")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["relay", *sys.argv[1:]])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
