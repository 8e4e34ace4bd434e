"""Everything tunable about a relay, with the defaults ``qsecret relay`` uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from relay.store import StoreLimits


@dataclass
class RelayConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8765
    relay_id: str | None = None  # default: persisted in data_dir/relay-id
    cert: Path | None = None
    key: Path | None = None
    self_signed: bool = False
    sync: str = "FULL"  # sqlite synchronous: FULL survives power loss, NORMAL a killed process
    # None: the embedded SQLite store in data_dir; "redis://HOST:PORT/DB": many relays over
    # one Redis (relay/store/redis.py), whose durability mode is redis_durability
    # ("strict": appendfsync always; "everysec": a Redis crash may lose the last second).
    store_url: str | None = None
    redis_durability: str = "strict"
    commit_interval: float = 0.004  # seconds; sqlite commits start at most this often
    # How much nicer the sqlite writer thread runs than the relay (Linux; 0: the same).
    # Deliveries wait on the event loop, only "stored" confirmations on the writer, so a
    # busy machine serves the loop first (relay/store/sqlite.py says why it is safe).
    writer_nice: int = 19
    store_limits: StoreLimits = field(default_factory=StoreLimits)
    max_connections: int = 10_000
    rate: float = 500.0  # text frames per second per connection, sustained
    burst: float = 1000.0
    # Binary frames on open streams (file chunks, call audio) have their own budget: a
    # file moves in chunks of up to 256 KiB, so the text budget would cap it at about
    # 130 MB/s. Their bytes are already paced by TCP backpressure and the spool quota;
    # this bounds the per-frame work of many small ones.
    stream_rate: float = 4000.0
    stream_burst: float = 8000.0
    abuse_limit: int = 16  # strikes within abuse_window seconds close with 1008
    abuse_window: float = 60.0
    auth_timeout: float = 10.0  # seconds to authenticate after connecting
    idle_timeout: float = 1800.0  # seconds without an application frame
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    window: int = 512  # deliveries in flight (unacked) per connection
    redeliver_after: float = 30.0  # seconds before an unacked delivery is sent again
    max_pending_sends: int = 256  # sends awaiting their commit per connection
    max_streams: int = 16  # live media streams per connection
    max_file_streams: int = 64  # durable file streams a handle has opened
    spool_quota_bytes: int = 4 * 1024**3  # file-stream frames held per recipient
    spool_ttl: float = 7 * 24 * 3600.0  # seconds a spooled frame (and an idle stream) is kept
    verify_threads: int = 2
    sweep_interval: float = 1.0
    expire_interval: float = 60.0
    gc_interval: float = 600.0  # seconds between full cyclic-GC passes (see Relay.start)
    # Memory bounded by configuration (issue 14; the formula is in the README): in-flight
    # deliveries are kept as seqs and sizes (bodies are re-read from the store to redeliver),
    # at most window_bytes of encoded deliver frames unacked per connection (one frame more
    # when a single one is larger), and at most max_sessions_per_handle logged-in
    # connections per handle on this relay (a further login is refused, close 1013).
    window_bytes: int = 1024 * 1024
    max_sessions_per_handle: int = 4
    # Replies (stored, pong, errors, ...) a connection may leave unread on top of what its
    # deliveries and stream frames can queue (relay.memory.unread_limit); past that sum
    # the client is not reading what it asks for and the connection is dropped.
    unread_reply_bytes: int = 1024 * 1024
    # -- operator endpoints (README "Relay metrics"). /metrics is not served on the websocket
    # port unless metrics_token is set (then it needs "Authorization: Bearer TOKEN"), so
    # exposing the relay, directly or behind a proxy, never exposes its metrics by accident.
    # metrics_host/metrics_port: a separate plain-HTTP listener for /metrics and /healthz
    # (port 0 picks one); the token, when set, is needed there too. /healthz stays on the
    # websocket port for load balancers: it says "ok" and nothing else.
    metrics_host: str | None = None
    metrics_port: int = 0
    metrics_token: str | None = None
    # Fair quotas (issue 14): a sender's share of each recipient's queue and spool and the
    # store's global cap are StoreLimits.sender_share / max_store_bytes. New handles per
    # source address (IPv6 per /64) within registration_window seconds; 0 turns it off.
    # Addresses in registration_exempt (CIDR) are not counted (loopback: tests, the demo).
    registrations_per_address: int = 20
    registration_window: float = 3600.0
    registration_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # Bundle fetches per requesting handle (token bucket; over it: error rate_limited). Each
    # fetch consumes one of the owner's one-time prekeys, so a stranger may not drain them.
    prekey_fetch_rate: float = 1.0  # per second, sustained
    prekey_fetch_burst: float = 50.0  # one full upload (MAX_ONE_TIME_PER_UPLOAD) at once
