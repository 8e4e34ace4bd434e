"""``qsecret relay``: run the websocket relay."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import resource
import signal
import sys
from pathlib import Path

import platformdirs

from relay import loop as event_loop
from relay.config import RelayConfig
from relay.store import StoreLimits


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``qsecret relay`` to the dispatcher."""
    parser = subparsers.add_parser(
        "relay",
        help="run the websocket relay (store-and-forward of sealed envelopes)",
        description="Run the qsecret relay. It only ever sees sealed envelopes.",
    )
    default_data = platformdirs.user_data_path("qsecret") / "relay"
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    parser.add_argument("--data", type=Path, default=default_data,
                        help=f"directory for the queue database and relay id ({default_data})")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--self-signed", action="store_true",
                     help="serve wss:// with a self-signed certificate kept in --data; "
                          "prints the SHA-256 fingerprint clients pin")
    tls.add_argument("--cert", type=Path, help="serve wss:// with this PEM certificate")
    parser.add_argument("--key", type=Path, help="PEM private key for --cert")
    parser.add_argument("--relay-id", help="relay id announced to clients (default: persisted)")
    parser.add_argument("--sync", choices=["full", "normal"], default="full",
                        help="sqlite durability: full survives power loss, normal a crash")
    parser.add_argument("--max-connections", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0,
                        help="text frames/s per connection (default 500)")
    parser.add_argument("--burst", type=float, default=1000.0)
    parser.add_argument("--stream-rate", type=float, default=4000.0,
                        help="binary stream frames (file chunks, call audio) per second per "
                             "connection (default 4000: about 1 GB/s in 256 KiB chunks)")
    parser.add_argument("--stream-burst", type=float, default=8000.0)
    parser.add_argument("--quota", type=int, default=10_000, help="queued envelopes per user")
    parser.add_argument("--ttl", type=float, default=14 * 24 * 3600,
                        help="seconds a queued envelope is kept")
    parser.add_argument("--spool-quota", type=parse_size, default=4 * 1024**3,
                        help="bytes of file-stream frames held per offline recipient "
                             "(e.g. 4GiB, 500MiB, 1000000; default 4GiB)")
    parser.add_argument("--spool-ttl", type=float, default=7 * 24 * 3600,
                        help="seconds a spooled file-stream frame (and an idle file stream) "
                             "is kept (default 7 days)")
    parser.add_argument("--max-file-streams", type=int, default=64,
                        help="open file streams per handle")
    parser.add_argument("--expire-interval", type=float, default=60.0,
                        help="seconds between sweeps of expired envelopes and spooled frames")
    parser.add_argument("--idle-timeout", type=float, default=1800.0,
                        help="seconds without an application frame before closing (1001)")
    parser.add_argument("--auth-timeout", type=float, default=10.0,
                        help="seconds to log in after connecting before closing (1008)")
    parser.add_argument("--redeliver-after", type=float, default=30.0,
                        help="seconds before an unacked delivery is sent again")
    # Bundle fetches per requesting handle (relay/prekeys.py).
    parser.add_argument("--prekey-fetch-rate", type=float, default=1.0,
                        help="prekey bundle fetches per second per requesting user (default 1)")
    parser.add_argument("--prekey-fetch-burst", type=float, default=50.0,
                        help="bundle fetches a user may make at once (default 50)")
    parser.add_argument("--gc-interval", type=float, default=600.0,
                        help="seconds between full garbage-collection passes (default 600)")
    parser.add_argument("--loop", choices=event_loop.CHOICES, default="auto",
                        help="event loop: uvloop when installed (auto, default) or asyncio")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.cert and not args.key:
        print("qsecret relay: --cert needs --key", file=sys.stderr)
        return 2
    for path in (args.cert, args.key):
        if path is not None and not path.is_file():
            print(f"qsecret relay: no such file: {path}", file=sys.stderr)
            return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # websockets logs whole frames at debug level: envelope bodies must never reach a log.
    logging.getLogger("websockets").setLevel(max(logging.INFO, logging.getLogger().level))
    raise_open_files_limit()
    config = RelayConfig(
        data_dir=args.data,
        host=args.host,
        port=args.port,
        relay_id=args.relay_id,
        cert=args.cert,
        key=args.key,
        self_signed=args.self_signed,
        sync=args.sync.upper(),
        store_limits=StoreLimits(quota_messages=args.quota, ttl_seconds=args.ttl),
        max_connections=args.max_connections,
        rate=args.rate,
        burst=args.burst,
        stream_rate=args.stream_rate,
        stream_burst=args.stream_burst,
        idle_timeout=args.idle_timeout,
        auth_timeout=args.auth_timeout,
        redeliver_after=args.redeliver_after,
        spool_quota_bytes=args.spool_quota,
        spool_ttl=args.spool_ttl,
        max_file_streams=args.max_file_streams,
        expire_interval=args.expire_interval,
        gc_interval=args.gc_interval,
        prekey_fetch_rate=args.prekey_fetch_rate,
        prekey_fetch_burst=args.prekey_fetch_burst,
    )
    from relay.memory import keep_freed_memory

    keep_freed_memory()
    try:
        event_loop.run(serve_forever(config), args.loop)
    except ValueError as exc:
        print(f"qsecret relay: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"qsecret relay: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
          "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1024,
          "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_size(text: str) -> int:
    """A byte count such as ``4GiB``, ``500MiB``, ``1.5GB`` or ``1000000`` (for argparse)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (a number with an optional unit: B, KB, MB, GB, TB, "
            "KiB, MiB, GiB, TiB)")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be positive")
    return size


def raise_open_files_limit() -> int:
    """Lift the soft open-files limit to the hard one: each connection is a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            pass
    return soft


async def serve_forever(config: RelayConfig) -> None:
    from relay.server import Relay, tune_gc
    from relay.wire import format_fingerprint

    # The SQLite and verify threads take the GIL in short bursts; a 1 ms switch interval
    # (default 5 ms) keeps the event loop's latency low while they do. A process-wide
    # knob, so the entry point sets it, not the Relay class.
    sys.setswitchinterval(0.001)
    relay = Relay(config)
    await relay.start()
    # What exists now lives as long as the process: frozen out of the cyclic GC, whose
    # full passes then run from the relay's sweeper, not in the middle of traffic.
    tune_gc()
    host = config.host if ":" not in config.host else f"[{config.host}]"
    url = f"{relay.scheme}://{host}:{relay.port}/"
    if relay.tls_fingerprint:
        print(f"relay certificate SHA-256 fingerprint: {format_fingerprint(relay.tls_fingerprint)}")
    print(f"relay id: {relay.relay_id} (event loop: {type(asyncio.get_running_loop()).__module__})")
    # Tests and scripts wait for this line; keep its shape.
    print(f"relay listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await relay.stop()
