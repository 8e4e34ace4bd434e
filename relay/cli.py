"""``qsecret relay``: run the websocket relay."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import re
import resource
import signal
import sys
from pathlib import Path

import platformdirs

from relay import loop as event_loop
from relay.config import RelayConfig
from relay.store import StoreLimits, StoreUnavailable


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``qsecret relay`` to the dispatcher."""
    parser = subparsers.add_parser(
        "relay",
        help="run the websocket relay (store-and-forward of sealed envelopes)",
        description="Run the qsecret relay. It only ever sees sealed envelopes.",
    )
    default_data = platformdirs.user_data_path("qsecret") / "relay"
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8765,
                        help="port (default 8765; 0 picks a free one)")
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
    parser.add_argument("--writer-nice", type=int, default=19, metavar="N",
                        help="run the sqlite writer thread N steps nicer than the relay "
                             "(0-39, Linux; default 19): deliveries wait on the event loop, "
                             "only 'stored' confirmations on the writer, so on a busy "
                             "machine the loop gets a core first; 0 keeps one priority")
    parser.add_argument("--store", default="sqlite", metavar="sqlite|redis://HOST:PORT/DB",
                        help="where the relay keeps queues, handles, prekeys and the spool: "
                             "sqlite in --data (default), or one Redis shared by many relays")
    parser.add_argument("--redis-durability", choices=["strict", "everysec"], default="strict",
                        help="with --store redis://: strict needs Redis with appendonly yes "
                             "and appendfsync always (an acked send survives a Redis crash); "
                             "everysec: a Redis crash may lose the last second")
    parser.add_argument("--max-connections", type=int, default=10_000,
                        help="websocket connections open at once; more are refused at the "
                             "handshake with 503 (default 10000)")
    parser.add_argument("--rate", type=float, default=500.0,
                        help="text frames/s per connection (default 500)")
    parser.add_argument("--burst", type=float, default=1000.0,
                        help="text frames a connection may send at once beyond --rate "
                             "(default 1000)")
    parser.add_argument("--stream-rate", type=float, default=4000.0,
                        help="binary stream frames (file chunks, call audio) per second per "
                             "connection (default 4000: about 1 GB/s in 256 KiB chunks)")
    parser.add_argument("--stream-burst", type=float, default=8000.0,
                        help="binary stream frames a connection may send at once beyond "
                             "--stream-rate (default 8000)")
    parser.add_argument("--quota", type=int, default=10_000,
                        help="queued envelopes per user (default 10000)")
    parser.add_argument("--ttl", type=float, default=14 * 24 * 3600,
                        help="seconds a queued envelope is kept (default 14 days)")
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
    # Memory bounded by configuration (see the README's relay memory formula).
    parser.add_argument("--window", type=positive_int, default=512,
                        help="unacknowledged deliveries per connection (default 512)")
    parser.add_argument("--window-bytes", type=parse_size, default=1024 * 1024,
                        help="bytes of unacknowledged deliver frames per connection "
                             "(default 1MiB)")
    parser.add_argument("--max-sessions-per-handle", type=positive_int, default=4,
                        help="connections one handle may have logged in; a further login is "
                             "refused with too_many_sessions and close 1013 (default 4)")
    parser.add_argument("--unread-reply-bytes", type=parse_size, default=1024 * 1024,
                        help="replies (stored, pong, errors) a connection may leave unread "
                             "beyond its delivery window and stream frames; a client that "
                             "asks for more without reading is dropped (default 1MiB)")
    # -- operator endpoints: where /metrics is served, and its token (README "Relay metrics")
    parser.add_argument("--metrics-listen", type=parse_listen, metavar="[HOST:]PORT",
                        help="serve /metrics and /healthz on this separate plain-HTTP address "
                             "(a bare PORT means 127.0.0.1:PORT; 0 picks a free port). "
                             "Without it or --metrics-token, /metrics is not served at all")
    parser.add_argument("--metrics-token", default=os.environ.get(METRICS_TOKEN_ENV),
                        metavar="TOKEN",
                        help="bearer token /metrics needs wherever it is served; with it, "
                             "/metrics is also served on the websocket port. Prefer "
                             f"${METRICS_TOKEN_ENV} (a flag shows in 'ps'). /healthz "
                             "answers 'ok' on the websocket port always, for load balancers")
    # Fair quotas and registrations (issue 14): shares, global cap, new handles per address.
    parser.add_argument("--quota-bytes", type=parse_size, default=64 * 1024**2,
                        help="queued envelope bytes per user (e.g. 64MiB, the default)")
    parser.add_argument("--sender-share", type=parse_share, default=0.25,
                        help="the part of a recipient's queue and spool one sender may fill "
                             "(0 < share <= 1; default 0.25; 1 turns shares off)")
    parser.add_argument("--max-store-size", type=parse_size, default=None,
                        help="global cap on the store's database size (e.g. 50GiB; default "
                             "none): past it sends and file frames are refused (store_full)")
    parser.add_argument("--registrations", type=int, default=20,
                        help="new handles one address (IPv6: one /64) may register per "
                             "--registration-window (default 20; 0: no limit)")
    parser.add_argument("--registration-window", type=float, default=3600.0,
                        help="seconds of the --registrations window (default 3600)")
    parser.add_argument("--registration-exempt", default="127.0.0.0/8,::1/128",
                        help="comma-separated networks not counted by --registrations "
                             "(default loopback; '' counts every address)")
    parser.add_argument("--loop", choices=event_loop.CHOICES, default="auto",
                        help="event loop: uvloop when installed (auto, default) or asyncio")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="what the relay logs to stderr (default info: start-up, "
                             "refusals, dropped connections)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.cert and not args.key:
        print("qsecret relay: --cert needs --key", file=sys.stderr)
        return 2
    for path in (args.cert, args.key):
        if path is not None and not path.is_file():
            print(f"qsecret relay: no such file: {path}", file=sys.stderr)
            return 2
    if args.metrics_token is not None and (problem := metrics_token_problem(args.metrics_token)):
        print(f"qsecret relay: --metrics-token / ${METRICS_TOKEN_ENV}: {problem}", file=sys.stderr)
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
        writer_nice=args.writer_nice,
        store_url=None if args.store == "sqlite" else args.store,
        redis_durability=args.redis_durability,
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
        window=args.window,
        window_bytes=args.window_bytes,
        unread_reply_bytes=args.unread_reply_bytes,
        max_sessions_per_handle=args.max_sessions_per_handle,
        metrics_host=args.metrics_listen[0] if args.metrics_listen else None,
        metrics_port=args.metrics_listen[1] if args.metrics_listen else 0,
        metrics_token=args.metrics_token,
        prekey_fetch_rate=args.prekey_fetch_rate,
        prekey_fetch_burst=args.prekey_fetch_burst,
    )
    # Fair quotas and registrations (issue 14): set apart from the fields above.
    try:
        config.store_limits = dataclasses.replace(
            config.store_limits, quota_bytes=args.quota_bytes, sender_share=args.sender_share,
            max_store_bytes=args.max_store_size or 0)
        config.registrations_per_address = args.registrations
        config.registration_window = args.registration_window
        config.registration_exempt = parse_networks(args.registration_exempt)
        if not 0 <= args.writer_nice <= 39:
            raise ValueError("--writer-nice must be in 0..39 (nice steps; 0: none)")
        if args.registrations < 0 or args.registration_window <= 0:
            raise ValueError("--registrations must be 0 (no limit) or more, and "
                             "--registration-window positive")
    except ValueError as exc:
        print(f"qsecret relay: {exc}", file=sys.stderr)
        return 2
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
    except StoreUnavailable as exc:
        print(f"qsecret relay: cannot use the store: {exc}", file=sys.stderr)
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


def positive_int(text: str) -> int:
    """A whole number of at least 1 (for argparse: 0 would make a limit refuse everything)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


METRICS_TOKEN_ENV = "QSECRET_RELAY_METRICS_TOKEN"
MIN_METRICS_TOKEN_CHARS = 16


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or a bare ``PORT`` (on 127.0.0.1), for argparse."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not [HOST:]PORT (e.g. 127.0.0.1:9465, [::1]:9465 or 9465)")
    return host, int(port)


def metrics_token_problem(token: str) -> str | None:
    """Why ``token`` cannot be the metrics bearer token (None if it can)."""
    if len(token) < MIN_METRICS_TOKEN_CHARS:
        return f"at least {MIN_METRICS_TOKEN_CHARS} characters, please (e.g. openssl rand -hex 16)"
    if not all(33 <= ord(c) < 127 for c in token):
        return "printable ASCII without spaces only (it travels in an HTTP header)"
    return None


def parse_share(text: str) -> float:
    """A sender's share: a fraction such as ``0.25`` or ``1/4`` (for argparse)."""
    try:
        num, _, den = text.partition("/")
        share = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a share (e.g. 0.25 or 1/4)") from None
    if not 0.0 < share <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: the share must be above 0 and at most 1")
    return share


def parse_networks(text: str) -> tuple[str, ...]:
    """Comma-separated networks (``10.0.0.0/8,::1``), checked; ValueError names a bad one."""
    import ipaddress

    networks = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"--registration-exempt: {item!r} is not a network") from None
    return tuple(networks)


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
    print(f"relay store: {relay.store.describe()}")
    if relay.metrics_port is not None:
        metrics_host = config.metrics_host or ""
        metrics_host = metrics_host if ":" not in metrics_host else f"[{metrics_host}]"
        print(f"relay metrics on http://{metrics_host}:{relay.metrics_port}/metrics")
    # Tests and scripts wait for this line; keep its shape.
    print(f"relay listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await relay.stop()
