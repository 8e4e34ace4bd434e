"""glibc malloc settings for the relay, which moves file chunks.

A file moves in frames of about 256 KiB. Every one of them is allocated and freed a few
times on its way through websockets (read buffer, payload, outgoing frame). With glibc's
defaults the freed space at the top of the heap is handed back to the kernel (the trim
threshold follows the mmap threshold, here about 512 KiB) and taken again for the next
frame, so each frame's buffers are fresh pages: a page fault and a zeroed page every 4 KiB.
Keeping up to 64 MiB of freed heap makes them reusable: about 12 % less relay CPU per
transfer in tests/bench/bench_transfer.py (0.32-0.37 CPU-s against 0.38-0.42 for 256 MiB).
The clients showed no difference, so they keep the defaults. A no-op where malloc is not
glibc's.
"""

from __future__ import annotations

import ctypes
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.config import RelayConfig

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD_BYTES = 64 << 20
MMAP_THRESHOLD_BYTES = 4 << 20  # buffers below this come from the heap, so they are reused


def keep_freed_memory() -> bool:
    """Apply the settings; False where they do not apply (not Linux with glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # e.g. musl: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    trim = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    mmap = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    return bool(trim and mmap)


# ---------------------------------------------------------------- the memory formula
# What one logged-in connection can make the relay hold, as the README's formula
# ("Relay memory") states it; tests/relay/test_relay_memory_bound.py holds a real relay to it.

READ_QUEUE_FRAMES = 16  # frames websockets reads ahead of a busy handler (serve max_queue)
DRAIN_PAGE = 64  # envelopes a drain reads beyond those in flight (relay/envelopes.py)
CONNECTION_OVERHEAD_BYTES = 128 * 1024  # an idle logged-in connection: 39 KiB ws, 93 KiB wss
FRAME_SLACK_BYTES = 256  # a deliver frame's JSON around its base64 body, rounded up


def deliver_frame_max() -> int:
    """The largest ``deliver`` frame: a ``MAX_ENVELOPE_BYTES`` body in base64 and its fields."""
    from relay.wire import MAX_ENVELOPE_BYTES

    return -(-MAX_ENVELOPE_BYTES // 3) * 4 + FRAME_SLACK_BYTES


def unread_limit(config: RelayConfig) -> int:
    """Bytes of text frames one connection may leave unread in the relay before it is dropped.

    What a slow but reading client can have queued: its deliveries (the window and one
    frame more, and a redelivery of them) and ``unread_reply_bytes`` of replies. Binary
    stream frames are held to a queue of their own (``BULK_OUTBOX_LIMIT`` frames; their
    senders wait), so they do not count here. A client that asks for more answers than
    that without reading them is dropped (relay.session.Session.post).
    """
    return 2 * (config.window_bytes + deliver_frame_max()) + config.unread_reply_bytes


def connection_bound(config: RelayConfig) -> int:
    """Bytes one connection can make the relay hold, whatever its client does.

    Text frames the client has not read: at most :func:`unread_limit` (deliveries are
    held as encoded frames only while the socket has not taken them; a redelivery waits
    until the socket has taken the first copies; replies beyond ``unread_reply_bytes``
    drop the connection). Binary frames to it: a receiver's queue is held to
    ``BULK_OUTBOX_LIMIT`` (its senders wait), plus a spool page being sent. A drain's
    store read holds the in-flight bodies and ``DRAIN_PAGE`` more until they are
    posted. Reading: websockets queues up to ``READ_QUEUE_FRAMES`` frames (each at most
    ``MAX_FRAME_BYTES``) while the handler is busy. Plus the connection's own objects.
    """
    from relay.streams import BULK_OUTBOX_LIMIT, SPOOL_PAGE
    from relay.wire import HEADER_BYTES, MAX_BINARY_PAYLOAD, MAX_FRAME_BYTES

    frame = deliver_frame_max()
    in_flight = config.window_bytes + frame
    binary = HEADER_BYTES + MAX_BINARY_PAYLOAD
    return (CONNECTION_OVERHEAD_BYTES
            + unread_limit(config)  # text frames to this client, not taken by its socket
            + in_flight + DRAIN_PAGE * frame  # a drain's store read, until it is posted
            + (BULK_OUTBOX_LIMIT + 1 + SPOOL_PAGE) * binary  # stream frames to this client
            + (READ_QUEUE_FRAMES + 1) * MAX_FRAME_BYTES)  # frames read, not yet handled


def handle_bound(config: RelayConfig) -> int:
    """Bytes all the connections of one handle can make the relay hold."""
    return config.max_sessions_per_handle * connection_bound(config)


def relay_bound(config: RelayConfig, baseline: int) -> int:
    """Bytes the whole relay can hold: its ``baseline`` (measured idle, with the store's
    page cache full) plus every connection at its bound."""
    return baseline + config.max_connections * connection_bound(config)
