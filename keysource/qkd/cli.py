"""`qsecret eve`: an eavesdropper between the two ends of a TCP QKD link.

It accepts Alice's connection on --listen, connects to Bob on --upstream, and relays frames both
ways, attacking what passes: intercept-resend on a fraction of the pulses of each quantum frame,
photon-number splitting (needs the link run with the fibre emulated at Bob's end), and, with
--tamper-classical, one flipped bit in a classical message of every Nth block. It prints one
line per quantum frame: pulses seen, pulses attacked, bits Eve will know.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .params import LinkParams


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def run_eve(args: argparse.Namespace) -> int:
    from .eve_proxy import run_eve as run  # numpy and the emulator load only when used

    return run(args)


def add_eve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", type=_host_port, required=True, metavar="HOST:PORT",
                        help="where Alice's end connects (port 0: any free port, printed)")
    parser.add_argument("--upstream", type=_host_port, required=True, metavar="HOST:PORT",
                        help="Bob's end of the link")
    parser.add_argument("--intercept-fraction", type=_fraction, default=0.0, metavar="F",
                        help="measure-and-resend this fraction of pulses (1.0: QBER ~25%%)")
    parser.add_argument("--pns", action="store_true",
                        help="photon-number splitting on multi-photon pulses (no QBER rise; "
                             "the decoy-state bound shrinks the key instead)")
    parser.add_argument("--tamper-classical", action="store_true",
                        help="flip one bit of a classical message in every Nth block")
    parser.add_argument("--tamper-every", type=int, default=3, metavar="N",
                        help="with --tamper-classical: which blocks (default every 3rd)")
    parser.add_argument("--fibre-km", type=float, default=LinkParams.fibre_km,
                        help="fibre length Eve replaces in a PNS attack")
    parser.add_argument("--loss-db-per-km", type=float, default=LinkParams.loss_db_per_km)
    parser.add_argument("--seed", type=int, default=None)


def register(subparsers: Any) -> None:
    """Add `qsecret eve` to the qsecret command."""
    parser = subparsers.add_parser(
        "eve", help="eavesdrop on a TCP QKD link (intercept-resend, PNS, tampering)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eve_arguments(parser)
    parser.set_defaults(func=run_eve)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keysource.qkd.cli", description=__doc__)
    add_eve_arguments(parser)
    return run_eve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
