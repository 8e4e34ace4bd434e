"""`qsecret eve`: an eavesdropper between the two ends of a TCP QKD link.

It accepts Alice's connection on --listen, connects to Bob on --upstream, and relays frames both
ways, attacking what passes: intercept-resend on a fraction of the pulses of each quantum frame,
photon-number splitting (needs the link run with the fibre emulated at Bob's end), and, with
--tamper-classical, one flipped bit in a classical message of every Nth block. It prints one
line per quantum frame: pulses seen, pulses attacked, bits Eve will know.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

import numpy as np

from .eve import attack_frame, tamper_classical_frame
from .net import read_frame, write_frames
from .params import LinkParams
from .protocol import SIFT_REPLY, ProtocolError, decode_quantum, encode_quantum


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


class EveProxy:
    """The attack logic applied to one direction of the relayed frame stream."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.params = LinkParams(fibre_km=args.fibre_km, loss_db_per_km=args.loss_db_per_km,
                                 seed=args.seed)
        self.rng = np.random.default_rng(args.seed)
        self.tampered_blocks: set[int] = set()
        self.pns_warned = False

    def _emit(self, record: dict[str, Any]) -> None:
        print(json.dumps(record), flush=True)

    def alice_to_bob(self, frame: bytes) -> bytes:
        if frame[:1] == b"Q":
            try:
                pulses = decode_quantum(frame)
            except ProtocolError:
                return frame  # not ours to repair; Bob rejects it
            pns = self.args.pns
            if pns and pulses.attenuated:
                if not self.pns_warned:
                    print("eve: frames are already attenuated (start the link with the fibre "
                          "emulated at the receiver); PNS skipped", file=sys.stderr, flush=True)
                    self.pns_warned = True
                pns = False
            attacked, known = attack_frame(pulses, self.params, self.rng,
                                           intercept_fraction=self.args.intercept_fraction,
                                           pns=pns)
            self._emit({"block": pulses.block, "pulses_in": len(pulses),
                        "pulses_out": len(attacked), "eve_knows": int(known.slot.size)})
            return encode_quantum(attacked)
        every = self.args.tamper_every
        if (self.args.tamper_classical and frame[:1] == b"C" and len(frame) > 8
                and frame[2] == SIFT_REPLY):
            block = int.from_bytes(frame[3:7], "big")
            if block % every == every - 1 and block not in self.tampered_blocks:
                self.tampered_blocks.add(block)
                self._emit({"block": block, "tampered": "SIFT_REPLY"})
                return tamper_classical_frame(frame)
        return frame


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                transform: Any) -> None:
    try:
        while True:
            frame = await read_frame(reader)
            write_frames(writer, [transform(frame)])
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve_eve(args: argparse.Namespace, stop: asyncio.Event | None = None) -> None:
    proxy = EveProxy(args)
    stop = stop or asyncio.Event()

    async def handle(a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter) -> None:
        try:
            b_reader, b_writer = await asyncio.open_connection(*args.upstream)
        except OSError as exc:
            print(f"eve: cannot reach upstream {args.upstream}: {exc}", file=sys.stderr)
            a_writer.close()
            return
        await asyncio.gather(
            _pump(a_reader, b_writer, lambda f: proxy.alice_to_bob(f)),
            _pump(b_reader, a_writer, lambda f: f),
        )

    server = await asyncio.start_server(handle, *args.listen)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"listening": port, "upstream": f"{args.upstream[0]}:{args.upstream[1]}",
                      "intercept_fraction": args.intercept_fraction, "pns": args.pns,
                      "tamper_classical": args.tamper_classical}), flush=True)
    try:
        await stop.wait()
    finally:
        server.close()


def run_eve(args: argparse.Namespace) -> int:
    if args.tamper_every < 1:
        print("qsecret eve: --tamper-every must be >= 1", file=sys.stderr)
        return 2
    try:
        LinkParams(fibre_km=args.fibre_km, loss_db_per_km=args.loss_db_per_km)
    except ValueError as exc:
        print(f"qsecret eve: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(serve_eve(args))
        except OSError as exc:
            print(f"qsecret eve: {exc}", file=sys.stderr)
            return 2
    return 0


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
