"""The eavesdropper's machinery behind ``qsecret eve`` (see :mod:`keysource.qkd.cli`)."""

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
