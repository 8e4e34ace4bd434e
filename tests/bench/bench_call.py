"""Calls: CPU per frame, one-way latency through the relay, concurrent calls per relay.

    python tests/bench/bench_call.py --quick --json OUT.json
    python tests/bench/bench_call.py --json OUT.json

(a) CPU per 20 ms frame for the whole media path (Opus encode, SFrame seal, open, jitter
    buffer, Opus decode: client.call.media) beside Opus encode + decode alone, same signal,
    same run (target: keys, SFrame and framing add at most 15 %).
(b) One-way latency of a call's media frames (50 per second each way, 160-byte payloads)
    through the relay, p50 and p99, beside a bare websockets forwarder (no auth, no
    validation, no streams) driven by the same load generator (target: the relay adds at
    most 2 ms at p50).
(c) How many concurrent calls (50 frames/s each way) one relay process carries with p99 at
    most 50 ms and under 1 % of the frames missing, beside the bare forwarder's number
    (target: at least 0.5 x). Calls double from a start until a step fails.

The servers run as their own processes on the same event loop as ``qsecret relay``; the load
generator is a third process (its latency includes its own scheduling, on both sides alike;
from a few thousand frames a second it is a limit itself, for both servers). p99 over a few
seconds is at the mercy of anything else the machine runs: read (c) on a quiet machine.
Loopback only, every wait bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from relay import loop as event_loop
from tests.bench._common import start_server, write_json

ROOT = Path(__file__).resolve().parents[2]
FRAME_S = 0.020
PAYLOAD_BYTES = 160  # an SFrame-sealed 24 kbit/s Opus frame is about this size
P99_LIMIT_MS = 50.0
MISSING_LIMIT = 0.01


# ---------------------------------------------------------------- (a) CPU per frame


def cpu_per_frame(seconds: float, rounds: int) -> dict[str, Any]:
    from client.call.media import MediaReceiver, MediaSender
    from client.call.opus import FRAME_SAMPLES, Decoder, Encoder
    from tests.call.speech import speech_like

    signal = speech_like(seconds)
    frames = [signal[i:i + FRAME_SAMPLES]
              for i in range(0, signal.size - FRAME_SAMPLES + 1, FRAME_SAMPLES)]
    key = os.urandom(32)

    def codec_only() -> None:
        encoder, decoder = Encoder(), Decoder()
        for pcm in frames:
            decoder.decode(encoder.encode(pcm))

    def full_path() -> None:
        sender, receiver = MediaSender(key, 0), MediaReceiver(key, 0)
        for n, pcm in enumerate(frames):
            receiver.receive(sender.frame(pcm), n * FRAME_S)
            receiver.play()

    def timed(run: Any) -> float:
        start = time.process_time()
        run()
        return (time.process_time() - start) / len(frames) * 1e6

    codec, full = [], []
    for _ in range(rounds):  # interleaved, so a noisy neighbour hurts both alike
        codec.append(timed(codec_only))
        full.append(timed(full_path))
    codec_us, full_us = statistics.median(codec), statistics.median(full)
    return {"frames": len(frames), "codec_us_per_frame": round(codec_us, 1),
            "call_path_us_per_frame": round(full_us, 1),
            "overhead_pct": round((full_us / codec_us - 1) * 100, 1)}


# ---------------------------------------------------------------- the bare forwarder


async def serve_bare() -> None:
    """Pairs connections by name (``/?h=NAME&to=PEER``) and sends each binary frame on."""
    from websockets.asyncio.server import serve

    clients: dict[str, Any] = {}

    async def handler(ws: Any) -> None:
        query = dict(part.split("=", 1) for part in ws.request.path.split("?", 1)[1].split("&"))
        clients[query["h"]] = ws
        try:
            async for data in ws:
                peer = clients.get(query["to"])
                if peer is not None:
                    await peer.send(data)
        finally:
            clients.pop(query["h"], None)

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=512 * 1024,
                     ping_interval=20, ping_timeout=20) as server:
        print(f"bare listening on {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Future()


# ---------------------------------------------------------------- load generator


async def loadgen(url: str, target: str, calls: int, seconds: float, tag: str) -> dict:
    """``calls`` calls, each two clients sending a frame every 20 ms to the other; the
    one-way latency of every frame (send to receipt, this process's clock)."""
    from websockets.asyncio.client import connect

    from keysource.pq import hybrid_signature
    from relay import wire

    relay_mode = target == "relay"
    hybrid = hybrid_signature()
    keypair = hybrid.generate_keypair() if relay_mode else None
    latencies: list[float] = []
    received = 0
    measuring = False

    async def login(handle: str, peer: str) -> Any:
        if not relay_mode:
            return await connect(f"{url}?h={handle}&to={peer}", compression=None,
                                 open_timeout=60, ping_interval=None)
        ws = await connect(url, compression=None, max_size=wire.MAX_FRAME_BYTES,
                           open_timeout=60, ping_interval=None)
        hello = wire.parse_server_frame(await ws.recv())
        message = wire.auth_message(hello.nonce, hello.relay, b"", handle, keypair.public_key)
        await ws.send(wire.Auth(handle, keypair.public_key, hello.relay,
                                hybrid.sign(keypair.secret_key, message)).encode())
        while True:
            frame = wire.parse_server_frame(await ws.recv())
            if isinstance(frame, wire.AuthOk):
                return ws
            if isinstance(frame, wire.Error):
                raise RuntimeError(f"login refused: {frame.message}")

    async def open_stream(ws: Any, stream: bytes, to: str) -> None:
        await ws.send(wire.StreamOpen(stream.hex(), to, "media", "s").encode())
        while True:
            frame = await ws.recv()
            if isinstance(frame, str):
                parsed = wire.parse_server_frame(frame)
                if isinstance(parsed, wire.StreamOk):
                    return
                if isinstance(parsed, wire.Error):
                    raise RuntimeError(f"stream refused: {parsed.message}")

    async def reader(ws: Any) -> None:
        nonlocal received
        try:
            async for data in ws:
                if isinstance(data, bytes) and measuring:
                    (sent,) = struct.unpack_from(">d", data, wire.HEADER_BYTES)
                    latencies.append(time.perf_counter() - sent)
                    received += 1
        except Exception:  # the connection closing at the end
            return

    async def sender(ws: Any, stream: bytes, stop_at: float) -> int:
        start, n = time.perf_counter(), 0
        while n < 100_000:
            n += 1
            wait = start + n * FRAME_S - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)  # the 20 ms clock
            if time.perf_counter() >= stop_at:
                return n - 1
            payload = struct.pack(">d", time.perf_counter()).ljust(PAYLOAD_BYTES, b"\0")
            await ws.send(wire.encode_binary(wire.KIND_MEDIA, stream, n, payload))
        return n

    pairs = []
    semaphore = asyncio.Semaphore(32)

    async def one_call(i: int) -> None:
        a, b = f"{tag}a{i}", f"{tag}b{i}"
        stream = os.urandom(16)
        async with semaphore:
            ws_b = await login(b, a)
            ws_a = await login(a, b)
            if relay_mode:
                await open_stream(ws_a, stream, b)
        pairs.append((ws_a, ws_b, stream))

    await asyncio.gather(*(one_call(i) for i in range(calls)))
    readers = [asyncio.create_task(reader(ws)) for ws_a, ws_b, _ in pairs for ws in (ws_a, ws_b)]
    measuring = True
    stop_at = time.perf_counter() + seconds
    sent = sum(await asyncio.gather(*(sender(ws, stream, stop_at)
                                      for ws_a, ws_b, stream in pairs for ws in (ws_a, ws_b))))
    deadline = time.perf_counter() + 2.0
    while received < sent and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)  # the last frames still in flight (bounded)
    measuring = False
    for task in readers:
        task.cancel()
    for ws_a, ws_b, _ in pairs:
        await ws_a.close()
        await ws_b.close()
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else -1.0

    return {"calls": calls, "sent": sent, "received": received,
            "missing": round(1 - received / sent, 4) if sent else 1.0,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


# ---------------------------------------------------------------- orchestrator


def run_loadgen(url: str, target: str, calls: int, seconds: float, tag: str) -> dict:
    cmd = [sys.executable, __file__, "--loadgen", "--url", url, "--target", target,
           "--calls", str(calls), "--seconds", str(seconds), "--tag", tag]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         timeout=120 + seconds + calls)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def capacity(urls: dict[str, str], start: int, limit: int, seconds: float,
             repeats: int) -> dict[str, Any]:
    """Double the calls from ``start`` while p99 and missing frames stay in bounds, the
    relay and the bare forwarder step by step (interleaved: a busy neighbour hurts both);
    each step is tried ``repeats`` times and its best try counts (one stall of a shared
    machine is not the server's limit)."""
    best = dict.fromkeys(urls, 0)
    steps: dict[str, list[dict[str, Any]]] = {target: [] for target in urls}
    going = set(urls)
    calls = start
    while going and calls <= limit:
        for target in sorted(going):
            tries = [run_loadgen(urls[target], target, calls, seconds, f"{target[0]}{calls}x{n}")
                     for n in range(repeats)]
            step = min(tries, key=lambda t: (t["missing"] > MISSING_LIMIT, t["p99_ms"]))
            steps[target].append({**step, "p99_ms_tries": [t["p99_ms"] for t in tries]})
            print(f"# {target}: {steps[target][-1]}", file=sys.stderr, flush=True)
            if step["p99_ms"] > P99_LIMIT_MS or step["missing"] > MISSING_LIMIT:
                going.discard(target)
            else:
                best[target] = calls
        calls *= 2
    return {"best": best, "steps": steps}


def orchestrate(args: argparse.Namespace) -> dict:
    cpu = cpu_per_frame(args.signal_seconds, args.rounds)
    print(f"# (a) {cpu}", file=sys.stderr, flush=True)
    data = tempfile.TemporaryDirectory()
    servers: list[subprocess.Popen[str]] = []
    try:
        bare, bare_port = start_server([sys.executable, __file__, "--serve-bare"],
                                       "bare listening on")
        servers.append(bare)
        relay, relay_port = start_server(
            [sys.executable, "-m", "relay", "--port", "0", "--data", data.name,
             "--log-level", "warning", "--max-connections", "20000", "--rate", "100000",
             "--burst", "100000"], "relay listening on")
        servers.append(relay)
        relay_url, bare_url = f"ws://127.0.0.1:{relay_port}/", f"ws://127.0.0.1:{bare_port}/"
        relay_lat, bare_lat = [], []
        for n in range(args.rounds):  # interleaved rounds, medians
            bare_lat.append(run_loadgen(bare_url, "bare", 1, args.latency_seconds, f"l{n}"))
            relay_lat.append(run_loadgen(relay_url, "relay", 1, args.latency_seconds, f"l{n}"))
        latency: dict[str, Any] = {
            "relay_p50_ms": statistics.median(r["p50_ms"] for r in relay_lat),
            "relay_p99_ms": statistics.median(r["p99_ms"] for r in relay_lat),
            "bare_p50_ms": statistics.median(r["p50_ms"] for r in bare_lat),
            "bare_p99_ms": statistics.median(r["p99_ms"] for r in bare_lat),
        }
        latency["relay_adds_p50_ms"] = round(latency["relay_p50_ms"] - latency["bare_p50_ms"], 2)
        latency["relay_rounds"], latency["bare_rounds"] = relay_lat, bare_lat
        print(f"# (b) {latency}", file=sys.stderr, flush=True)
        cap = capacity({"relay": relay_url, "bare": bare_url}, args.start_calls,
                       args.max_calls, args.step_seconds, args.step_repeats)
    finally:
        for server in servers:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        data.cleanup()
    relay_calls, bare_calls = cap["best"]["relay"], cap["best"]["bare"]
    ratio = relay_calls / bare_calls if bare_calls else 0.0
    return {
        "event_loop": event_loop.resolve("auto"),
        "cpu": {**cpu, "target_overhead_pct": 15.0},
        "latency": {**latency, "target_relay_adds_p50_ms": 2.0},
        "capacity": {"relay_calls": relay_calls, "bare_calls": bare_calls,
                     "ratio": round(ratio, 3), "target_ratio": 0.5,
                     "p99_limit_ms": P99_LIMIT_MS, "max_calls_tried": args.max_calls,
                     "relay_steps": cap["steps"]["relay"], "bare_steps": cap["steps"]["bare"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer calls")
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=5.0, help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="c", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        event_loop.run(serve_bare())  # the relay's loop, for a fair baseline
        return
    if args.loadgen:
        print(json.dumps(asyncio.run(loadgen(args.url, args.target, args.calls, args.seconds,
                                             args.tag))), flush=True)
        return
    args.rounds = 3
    args.signal_seconds = 5.0 if args.quick else 20.0
    args.latency_seconds = 3.0 if args.quick else 10.0
    args.step_seconds = 3.0 if args.quick else 8.0
    args.start_calls = 5
    args.max_calls = 640 if args.quick else 5120
    args.step_repeats = 2
    result = orchestrate(args)
    cpu, lat, cap = result["cpu"], result["latency"], result["capacity"]
    print(f"(a) CPU per 20 ms frame: call path {cpu['call_path_us_per_frame']} us beside Opus "
          f"alone {cpu['codec_us_per_frame']} us: +{cpu['overhead_pct']} % (target <= 15 %)")
    print(f"(b) one-way latency p50/p99: relay {lat['relay_p50_ms']}/{lat['relay_p99_ms']} ms "
          f"beside bare forwarder {lat['bare_p50_ms']}/{lat['bare_p99_ms']} ms: relay adds "
          f"{lat['relay_adds_p50_ms']} ms at p50 (target <= 2)")
    print(f"(c) concurrent calls with p99 <= {P99_LIMIT_MS:.0f} ms: relay {cap['relay_calls']} "
          f"beside bare forwarder {cap['bare_calls']} (ratio {cap['ratio']}, target >= 0.5; "
          f"tried up to {cap['max_calls_tried']})")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
