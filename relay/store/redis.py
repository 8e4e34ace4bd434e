"""Redis store: many relay processes over one durable Redis (``--store redis://HOST:PORT/DB``).

Each operation is one call of a Lua function (relay/store/redis_lua.py), so every check
and write of one operation is atomic even when several relays share the Redis: de-dup on
(sender, msg), the recipient's quota, the sender's share, the global cap, one-time prekey
pops, spool accounting. Per-recipient queues are Redis Streams with the consumer group
``relay``: XADD on enqueue (the entry carries the seq; the de-dup key holds it for the
TTL), XREADGROUP hands new entries to this relay (its consumer), XACK + XDEL when the
client acks, and XAUTOCLAIM takes over deliveries still pending for another consumer, so
a live relay serves what a dead one had handed out but never saw acked.

All operations go through one writer task and one connection, in the order they were
queued: an ack always runs after its envelope's enqueue, as the interface promises.
What queued while a round trip was in flight goes out as one pipeline.

Durability: Redis answers a write only after it is in its AOF under the server's
``appendfsync``. ``strict`` (default) refuses to open unless the server runs
``appendonly yes`` with ``appendfsync always`` (each reply follows an fsync: an acked
"stored" survives a Redis crash and power loss); ``everysec`` needs ``appendonly yes``
and accepts ``appendfsync everysec``: a Redis crash may lose the last second.

Wake-ups: the relay records here which handles have a session on it (``set_presence``); the
Lua function that queues an envelope or spools a file frame for a handle publishes on its
wake channel when another relay has a session of it (relay/routing_redis.py listens).

Sequence numbers: ``new_envelope`` must not do I/O, so each relay reserves blocks of
numbers with INCRBY on one counter and refills ahead of need (half a block left). Blocks
are large (2^20) because a refill needs the event loop to turn: a burst of sends handled
in one loop pass must not run dry; 2^53 (JSON's exact integers) still allows 2^33 blocks.
Numbers are unique across relays and restarts and increasing within each relay process
(two relays interleave blocks). The queue order is the stream's (arrival) order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from relay.wire import OneTimePrekey, PrekeyBundle

from .base import (
    BindStatus,
    BundleRefused,
    EnqueueResult,
    EnqueueStatus,
    Envelope,
    FetchedBundle,
    SpooledFrame,
    SpoolPage,
    SpoolResult,
    SpoolStatus,
    Store,
    StoreLimits,
    StoreUnavailable,
    StreamRecord,
    StreamStatus,
)
from .redis_lua import LIBRARY

log = logging.getLogger("qsecret.relay.store.redis")

DURABILITY_MODES = ("strict", "everysec")
_EXPIRE_SCAN = 5000
_OT_HEAD = struct.Struct(">QI")  # packed one-time prekey: key_id, len(key), key, sig
_SEQ = struct.Struct(">Q")
_ENQUEUE_STATUS = {s.value: s for s in EnqueueStatus}
_SPOOL_STATUS = {s.value: s for s in SpoolStatus}
_BIND_STATUS = {s.value: s for s in BindStatus}
_STREAM_STATUS = {s.value: s for s in StreamStatus}


class RedisUnavailable(StoreUnavailable):
    """redis-py is not installed, or the server cannot be used as configured."""


def _redis_module() -> Any:
    try:
        import redis.asyncio as redis_asyncio
    except ImportError as exc:  # the optional extra
        raise RedisUnavailable(
            "--store redis:// needs redis-py: pip install 'qsecret[redis]'") from exc
    return redis_asyncio


def how_to_start(durability: str) -> str:
    """The redis-server command line a durability mode needs (for error messages)."""
    fsync = "always" if durability == "strict" else "everysec"
    return f"redis-server --appendonly yes --appendfsync {fsync}"


def check_durability(config: dict[str, str], durability: str) -> str | None:
    """What is wrong with a server's ``appendonly``/``appendfsync`` for ``durability``
    (None: fine)."""
    appendonly = config.get("appendonly", "?")
    fsync = config.get("appendfsync", "?")
    wanted = ("always",) if durability == "strict" else ("always", "everysec")
    if appendonly == "yes" and fsync in wanted:
        return None
    return (f"Redis runs appendonly {appendonly} with appendfsync {fsync}; "
            f"--redis-durability {durability} needs appendonly yes and appendfsync "
            f"{' or '.join(wanted)}: start it as `{how_to_start(durability)}` "
            f"(or CONFIG SET appendonly yes; CONFIG SET appendfsync {wanted[0]})")


class _Op:
    """One queued store operation: a function call and where its answer goes."""

    __slots__ = ("args", "convert", "done", "function")

    def __init__(self, function: str, args: Sequence[Any], convert: Callable[[Any], Any],
                 done: asyncio.Future[Any] | Callable[[bool, Any], None] | None) -> None:
        self.function = function
        self.args = args
        self.convert = convert
        self.done = done


class RedisStore(Store):
    """The store for several relays sharing one Redis (see module docstring)."""

    shared = True

    def __init__(self, url: str, limits: StoreLimits | None = None, *,
                 durability: str = "strict", prefix: str = "qsecret:",
                 seq_block: int = 1 << 20, max_batch: int = 1024,
                 max_backlog: int = 8192, consumer: str | None = None) -> None:
        if durability not in DURABILITY_MODES:
            raise ValueError(f"redis durability must be one of {', '.join(DURABILITY_MODES)}")
        self.url = url
        self.limits = limits or StoreLimits()
        self.durability = durability
        self.prefix = prefix
        self.seq_block = seq_block
        self.max_batch = max_batch
        self.max_backlog = max_backlog
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._redis: Any = None
        self._ops: collections.deque[_Op] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._room: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._seq_next = 0  # next number of the current block
        self._seq_end = 0  # first number past the current block
        self._seq_spare: tuple[int, int] | None = None  # the next block, reserved ahead
        self._seq_refill: asyncio.Task[None] | None = None
        self._last_ts = 0
        self._total_depth = 0
        self._spool_total = 0
        self.round_trips = 0  # pipelines sent (for tests and metrics)
        # Queue reads in progress per recipient, and the seqs acked meanwhile (see pending).
        self._reading: dict[str, int] = {}
        self._acked_meanwhile: dict[str, set[int]] = {}
        # Set while the server no longer runs the durability this store was opened with
        # (re-checked with each expiry round): every operation is refused meanwhile.
        self.unsafe: str | None = None

    # ------------------------------------------------------------ plumbing

    async def open(self) -> None:
        redis_asyncio = _redis_module()
        self._redis = redis_asyncio.Redis.from_url(self.url, decode_responses=False)
        try:
            await self._check_server()
            await self._redis.execute_command("FUNCTION", "LOAD", "REPLACE", LIBRARY)
            self._seq_next, self._seq_end = await self._reserve()
            self._total_depth, self._spool_total = await self._redis.fcall(
                "qs_totals", 0, self.prefix)
        except BaseException:
            await self._redis.aclose()
            self._redis = None
            raise
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._writer = asyncio.create_task(self._write_loop(), name="relay-redis-writer")

    async def _check_server(self) -> None:
        from redis import exceptions as errors

        try:
            config = await self._redis.config_get("append*")
        except errors.ResponseError as exc:  # CONFIG renamed or disabled
            raise RedisUnavailable(
                f"cannot read the Redis server's persistence settings ({exc}); the relay "
                f"needs CONFIG GET to check durability (`{how_to_start(self.durability)}`)"
            ) from exc
        except (OSError, errors.ConnectionError) as exc:
            raise RedisUnavailable(f"cannot reach Redis at {_redact(self.url)}: {exc}") from exc
        values = {_text(k): _text(v) for k, v in config.items()}
        if (problem := check_durability(values, self.durability)) is not None:
            raise RedisUnavailable(problem)
        info = await self._redis.info("server")
        if int(str(info.get("redis_version", "0")).split(".")[0]) < 7:
            raise RedisUnavailable(f"Redis {info.get('redis_version')} is too old: the relay "
                                   "needs Redis 7 or later (functions, XAUTOCLAIM)")

    async def close(self) -> None:
        if self._redis is None:
            return
        try:
            await self.barrier()  # everything queued before runs first
        except Exception as exc:  # Redis gone: what was queued is reported failed below
            log.error("redis store closing with Redis unreachable: %s", exc)
        for task in (self._writer, self._seq_refill):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._writer = self._seq_refill = None
        while self._ops:  # queued after the barrier, or left by a failed one: not stored
            _settle(self._ops.popleft(), False, RedisUnavailable("store closed"))
        await self._redis.aclose()
        self._redis = None

    async def health(self) -> str:
        """PING Redis (on its own connection, not behind queued writes)."""
        if self._redis is None:
            raise RedisUnavailable("store is not open")
        if self.unsafe is not None:
            raise RedisUnavailable(self.unsafe)
        started = time.perf_counter()
        await self._redis.ping()
        return f"redis ok ({(time.perf_counter() - started) * 1000:.1f} ms)"

    def describe(self) -> str:
        return f"redis {_redact(self.url)} (durability {self.durability})"

    def _queue(self, function: str, args: Sequence[Any], convert: Callable[[Any], Any],
               done: asyncio.Future[Any] | Callable[[bool, Any], None] | None) -> None:
        if self._redis is None or self._wake is None:
            raise RuntimeError("store is not open")
        self._ops.append(_Op(function, args, convert, done))
        self._wake.set()

    def _call(self, function: str, *args: Any,
              convert: Callable[[Any], Any] = lambda value: value) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        self._queue(function, (self.prefix, *args), convert, future)
        return future

    def behind(self) -> bool:
        return len(self._ops) > self.max_backlog

    async def wait_for_room(self) -> None:
        deadline = time.monotonic() + 10.0
        while self.behind() and self._room is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), min(left, 0.1))

    async def _write_loop(self) -> None:
        assert self._wake is not None and self._room is not None
        while True:
            if not self._ops:
                self._wake.clear()
                await self._wake.wait()
            batch = [self._ops.popleft() for _ in range(min(len(self._ops), self.max_batch))]
            if self.unsafe is not None:  # not "stored" under weaker durability than promised
                for op in batch:
                    _settle(op, False, RedisUnavailable(self.unsafe))
                self._room.set()
                continue
            pipe, sizes = self._pipeline(batch)
            began = time.perf_counter()
            try:
                replies = _unbatch(await pipe.execute(raise_on_error=False), sizes)
                if self.observe_commit is not None:  # the round trip is this store's commit
                    self.observe_commit(time.perf_counter() - began)
            except asyncio.CancelledError:
                for op in batch:
                    _settle(op, False, RedisUnavailable("store closed"))
                raise
            except Exception as exc:  # the connection failed: none of these is known stored
                log.error("redis pipeline failed (%s): %d operations refused", exc, len(batch))
                replies = [exc] * len(batch)
            self.round_trips += 1
            if any(_no_function(reply) for reply in replies):
                # Redis came back without its functions (it lost its data: persistence
                # off). Those calls did not run; load the library and run them again.
                await self._reload_library(batch, replies)
            for op, reply in zip(batch, replies, strict=True):
                if isinstance(reply, Exception):
                    _settle(op, False, reply)
                    continue
                try:
                    value = op.convert(reply)
                except Exception as exc:
                    _settle(op, False, exc)
                    continue
                _settle(op, True, value)
            if not self.behind():
                self._room.set()

    def _pipeline(self, batch: list[_Op]) -> tuple[Any, list[int]]:
        """One pipeline for ``batch``, in order: each run of function calls is one
        ``qs_batch`` call (Redis reads a pipeline 16 KiB per event-loop turn and, under
        ``appendfsync always``, fsyncs after each turn that wrote: one call per run means
        one fsync, and one reply to parse); plain commands go as they are. Returns the
        pipeline and how many operations each of its commands carries (0: not batched)."""
        pipe = self._redis.pipeline(transaction=False)
        sizes: list[int] = []
        run: list[_Op] = []

        def flush() -> None:
            if len(run) == 1:
                pipe.fcall(run[0].function, 0, *run[0].args)
                sizes.append(0)
            elif run:
                args: list[Any] = []
                for op in run:
                    args += [op.function, len(op.args), *op.args]
                pipe.fcall("qs_batch", 0, *args)
                sizes.append(len(run))
            run.clear()

        for op in batch:
            if op.function.startswith("qs_"):
                run.append(op)
            else:  # a plain command
                flush()
                pipe.execute_command(op.function, *op.args)
                sizes.append(0)
        flush()
        return pipe, sizes

    async def _reload_library(self, batch: list[_Op], replies: list[Any]) -> None:
        log.error("redis lost the relay's functions (restarted without its data?): "
                  "loading them again")
        try:
            await self._redis.execute_command("FUNCTION", "LOAD", "REPLACE", LIBRARY)
        except Exception as exc:
            log.error("cannot load the relay's functions into Redis: %s", exc)
            return
        for index, (op, reply) in enumerate(zip(batch, replies, strict=True)):
            if _no_function(reply):
                pipe = self._redis.pipeline(transaction=False)
                pipe.fcall(op.function, 0, *op.args)
                try:
                    replies[index] = (await pipe.execute(raise_on_error=False))[0]
                except Exception as exc:
                    replies[index] = exc

    # ------------------------------------------------------------ identities

    async def bind_identity(self, handle: str, identity: bytes) -> BindStatus:
        return await self._call("qs_bind", handle, identity,
                                convert=lambda r: _BIND_STATUS[_text(r)])

    def _read(self, *command: Any, convert: Callable[[Any], Any]) -> asyncio.Future[Any]:
        """A plain read, queued behind every earlier write (it sees them all)."""
        future = asyncio.get_running_loop().create_future()
        self._queue(command[0], command[1:], convert, future)
        return future

    async def identity_of(self, handle: str) -> bytes | None:
        return await self._read("HGET", self.prefix + "h", handle,
                                convert=lambda r: None if r is None else bytes(r))

    # ------------------------------------------------------------ envelopes

    async def _reserve(self) -> tuple[int, int]:
        end = int(await self._redis.incrby(self.prefix + "seq", self.seq_block)) + 1
        return end - self.seq_block, end

    async def _refill(self) -> None:
        try:
            self._seq_spare = await self._reserve()
        except Exception:
            log.exception("cannot reserve envelope numbers from Redis")
        finally:
            self._seq_refill = None

    def new_envelope(self, sender: str, recipient: str, msg: str, body: bytes) -> Envelope:
        if self._seq_next >= self._seq_end:
            if self._seq_spare is None:
                if self._seq_refill is None:  # try again, for the sends after this one
                    self._seq_refill = asyncio.ensure_future(self._refill())
                raise RedisUnavailable("no envelope numbers reserved: Redis is unreachable")
            self._seq_next, self._seq_end = self._seq_spare
            self._seq_spare = None
        seq = self._seq_next
        self._seq_next += 1
        if (self._seq_spare is None and self._seq_refill is None
                and self._seq_end - self._seq_next < self.seq_block // 2):
            self._seq_refill = asyncio.ensure_future(self._refill())
        self._last_ts = max(self._last_ts, int(time.time() * 1000))
        return Envelope(seq, recipient, sender, msg, body, self._last_ts)

    def _enqueue_args(self, envelope: Envelope) -> tuple[Any, ...]:
        limits = self.limits
        return (self.prefix, envelope.recipient, envelope.sender, envelope.msg, envelope.body,
                envelope.seq, envelope.ts, max(1, int(limits.ttl_seconds * 1000)),
                limits.quota_messages, limits.quota_bytes, limits.share_messages,
                limits.share_bytes, limits.max_store_bytes, self.consumer)

    def _enqueued(self, envelope: Envelope) -> Callable[[Any], EnqueueResult]:
        def convert(reply: Any) -> EnqueueResult:
            status = _ENQUEUE_STATUS[_text(reply[0])]
            if status is EnqueueStatus.STORED:
                self._total_depth = int(reply[1])
                return EnqueueResult(status, envelope)
            return EnqueueResult(status)
        return convert

    async def enqueue(self, envelope: Envelope) -> EnqueueResult:
        future = asyncio.get_running_loop().create_future()
        self._queue("qs_enqueue", self._enqueue_args(envelope), self._enqueued(envelope), future)
        return await future

    def enqueue_then(self, envelope: Envelope, callback: Callable[[bool, Any], None]) -> None:
        self._queue("qs_enqueue", self._enqueue_args(envelope), self._enqueued(envelope),
                    callback)

    async def pending(self, recipient: str, limit: int) -> list[Envelope]:
        """As the interface says; and never an envelope whose ack this store was given
        while the read was on its way (the reader would take it for a fresh one). Relays
        that share a Redis deliver through these reads, not in-process, so that race is
        their common case, not a rare one."""
        if limit <= 0:
            return []
        while True:
            self._reading[recipient] = self._reading.get(recipient, 0) + 1
            try:
                rows: list[Envelope] = await self._call(
                    "qs_pending", recipient, self.consumer, limit,
                    convert=lambda r: _envelopes_of(recipient, r))
            finally:
                acked = self._acked_meanwhile.get(recipient)
                left = self._reading[recipient] - 1
                if left:
                    self._reading[recipient] = left
                else:
                    del self._reading[recipient]
                    self._acked_meanwhile.pop(recipient, None)
            if not acked or not any(row.seq in acked for row in rows):
                return rows
            if len(rows) < limit:
                # A short page holds the whole queue: leaving those out keeps it short.
                return [row for row in rows if row.seq not in acked]
            # A full page: read again rather than return a short one (the caller takes a
            # short page for the end of the queue); those acks are now ahead of the read.

    def _note_acks(self, recipient: str, seqs: Sequence[int]) -> None:
        if recipient in self._reading:
            self._acked_meanwhile.setdefault(recipient, set()).update(seqs)

    async def envelopes(self, recipient: str, seqs: Sequence[int]) -> list[Envelope]:
        if not seqs:
            return []
        return await self._call("qs_envelopes", recipient, *seqs,
                                convert=lambda r: sorted(_envelopes_of(recipient, r),
                                                         key=lambda e: e.seq))

    def _acked(self, reply: Any) -> int:
        self._total_depth = int(reply[1])
        return int(reply[0])

    async def ack(self, recipient: str, seqs: Sequence[int]) -> int:
        if not seqs:
            return 0
        self._note_acks(recipient, seqs)
        return await self._call("qs_ack", recipient, *seqs, convert=self._acked)

    def ack_nowait(self, recipient: str, seqs: Sequence[int]) -> None:
        if seqs:
            self._note_acks(recipient, seqs)
            self._queue("qs_ack", (self.prefix, recipient, *seqs), self._acked, None)

    async def queue_depth(self, recipient: str) -> int:
        return await self._read("HGET", self.prefix + "qs:" + recipient, "n",
                                convert=lambda r: int(r or 0))

    def total_queue_depth(self) -> int:
        return self._total_depth

    async def expire(self) -> int:
        await self._recheck_durability()
        if self.unsafe is not None:  # refused anyway; the next round looks again
            return 0
        cutoff = int((time.time() - self.limits.ttl_seconds) * 1000)
        return await self._call("qs_expire", cutoff, _EXPIRE_SCAN, convert=self._acked)

    async def _recheck_durability(self) -> None:
        """An operator may CONFIG SET appendfsync later: refuse to store until it is back."""
        config = await self._redis.config_get("append*")
        problem = check_durability({_text(k): _text(v) for k, v in config.items()},
                                   self.durability)
        if problem != self.unsafe:
            if problem is None:
                log.warning("Redis durability is back to %s: storing again", self.durability)
            else:
                log.error("refusing every store operation: %s", problem)
        self.unsafe = problem

    # ------------------------------------------------------------ prekeys

    async def put_bundle(self, handle: str, bundle: PrekeyBundle) -> int:
        keys = {k.key_id: k for k in bundle.one_time}
        if len(keys) > self.limits.max_one_time_stored:
            raise BundleRefused(
                f"{len(keys)} one-time prekeys would be stored; the limit is "
                f"{self.limits.max_one_time_stored}")
        packed: list[Any] = []
        for key_id, key in sorted(keys.items()):
            packed += [key_id, _OT_HEAD.pack(key_id, len(key.key)) + key.key + key.sig]
        return int(await self._call("qs_put_bundle", handle, bundle.identity, bundle.signed,
                                    bundle.signed_sig, int(time.time() * 1000), *packed))

    async def take_bundle(self, handle: str) -> FetchedBundle | None:
        return await self._call("qs_take_bundle", handle, convert=_fetched)

    async def prekey_count(self, handle: str) -> int:
        return await self._read("ZCARD", self.prefix + "ot:" + handle, convert=int)

    # ------------------------------------------------------------ file streams

    async def register_stream(self, stream: bytes, a: str, b: str, now_ms: int, expires_ms: int,
                              max_per_handle: int) -> StreamStatus:
        return await self._call("qs_register_stream", stream, a, b, now_ms, expires_ms,
                                max_per_handle, convert=lambda r: _STREAM_STATUS[_text(r)])

    async def file_streams(self, now_ms: int) -> list[StreamRecord]:
        return await self._call("qs_file_streams", now_ms, convert=lambda rows: [
            StreamRecord(bytes(s), _text(a), _text(b), int(c), int(e))
            for s, a, b, c, e in rows])

    async def file_stream(self, stream: bytes, now_ms: int) -> StreamRecord | None:
        def convert(reply: Any) -> StreamRecord | None:
            if reply is None:
                return None
            a, b, created, expires = reply
            return StreamRecord(stream, _text(a), _text(b), int(created), int(expires))
        return await self._call("qs_file_stream", stream, now_ms, convert=convert)

    def _spool_changed(self, reply: Any) -> int:
        self._spool_total = int(reply[-1])
        return int(reply[0])

    async def close_stream(self, stream: bytes) -> int:
        return await self._call("qs_close_stream", stream, convert=self._spool_changed)

    async def end_upload(self, stream: bytes) -> bool:
        return bool(await self._call("qs_end_upload", stream, convert=int))

    def _spool_args(self, recipient: str, stream: bytes, seq: int, data: bytes, now_ms: int,
                    expires_ms: int, quota_bytes: int) -> tuple[Any, ...]:
        return (self.prefix, recipient, stream, stream + _SEQ.pack(seq), data, now_ms,
                expires_ms, quota_bytes, self.limits.share_of(quota_bytes),
                self.limits.max_store_bytes, self.consumer)

    def _spooled(self, reply: Any) -> SpoolResult:
        status = _SPOOL_STATUS[_text(reply[0])]
        if status is SpoolStatus.STORED:
            self._spool_total = int(reply[2])
            return SpoolResult(status, int(reply[1]))
        return SpoolResult(status)

    async def spool(self, recipient: str, stream: bytes, seq: int, data: bytes, now_ms: int,
                    expires_ms: int, quota_bytes: int) -> SpoolResult:
        future = asyncio.get_running_loop().create_future()
        self._queue("qs_spool", self._spool_args(recipient, stream, seq, data, now_ms,
                                                 expires_ms, quota_bytes),
                    self._spooled, future)
        return await future

    def spool_then(self, recipient: str, stream: bytes, seq: int, data: bytes, now_ms: int,
                   expires_ms: int, quota_bytes: int,
                   callback: Callable[[bool, Any], None]) -> None:
        self._queue("qs_spool", self._spool_args(recipient, stream, seq, data, now_ms,
                                                 expires_ms, quota_bytes),
                    self._spooled, callback)

    async def spool_page(self, recipient: str, after: int, limit: int,
                         now_ms: int) -> SpoolPage:
        def convert(reply: Any) -> SpoolPage:
            frames = [SpooledFrame(int(row), bytes(fid[:16]), _SEQ.unpack(fid[16:])[0],
                                   bytes(data)) for row, fid, data in reply[1]]
            return SpoolPage(frames, int(reply[0]))
        return await self._call("qs_spool_page", recipient, after, limit, now_ms,
                                convert=convert)

    async def spool_ack(self, recipient: str, stream: bytes, seqs: Sequence[int]) -> int:
        if not seqs:
            return 0
        return await self._call("qs_spool_ack", recipient,
                                *(stream + _SEQ.pack(seq) for seq in seqs),
                                convert=self._spool_changed)

    def spool_ack_nowait(self, recipient: str, stream: bytes, seqs: Sequence[int]) -> None:
        if seqs:
            self._queue("qs_spool_ack", (self.prefix, recipient,
                                         *(stream + _SEQ.pack(seq) for seq in seqs)),
                        self._spool_changed, None)

    async def expire_spool(self, now_ms: int) -> tuple[int, list[bytes]]:
        def convert(reply: Any) -> tuple[int, list[bytes]]:
            self._spool_total = int(reply[2])
            return int(reply[0]), [bytes(s) for s in reply[1]]
        return await self._call("qs_expire_spool", now_ms, _EXPIRE_SCAN, convert=convert)

    def spool_bytes(self) -> int:
        return self._spool_total

    async def spool_bytes_of(self, recipient: str) -> int:
        return await self._read("HGET", self.prefix + "sq:" + recipient, "b",
                                convert=lambda r: int(r or 0))

    async def barrier(self) -> None:
        future = asyncio.get_running_loop().create_future()
        self._queue("PING", (), lambda reply: None, future)
        await future

    def barrier_then(self, callback: Callable[[bool, Any], None]) -> None:
        self._queue("PING", (), lambda reply: None, callback)

    # ------------------------------------------------------------ wake-ups between relays

    def wake_channel(self, handle: str) -> str:
        """The pub/sub channel on which relays hear that ``handle`` has something queued."""
        return f"{self.prefix}wake:{handle}"

    def set_presence(self, handle: str, live: bool) -> None:
        """Record (in order with every other write) whether this relay has a session of
        ``handle``: the writes queueing something for it then wake this relay (see
        relay/store/redis_lua.py, "Wake-ups")."""
        if self._redis is None:  # closed: reset_presence ran (or Redis was never reached)
            return
        self._queue("qs_presence", (self.prefix, self.consumer, handle, b"1" if live else b"0"),
                    lambda reply: None, None)

    def reset_presence(self) -> None:
        """Forget the sessions this relay had before it (re)started or stopped."""
        self._queue("qs_presence_reset", (self.prefix, self.consumer), lambda reply: None, None)

    def client(self) -> Any:
        """The redis-py client (open store only), for the relay's pub/sub subscriber."""
        if self._redis is None:
            raise RuntimeError("store is not open")
        return self._redis


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _redact(url: str) -> str:
    """The URL without a password (it is printed at start-up)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


def _envelopes_of(recipient: str, entries: Any) -> list[Envelope]:
    out = []
    for _, fields in entries:
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        out.append(Envelope(int(values[b"q"]), recipient, values[b"s"].decode(),
                            values[b"m"].decode(), bytes(values[b"b"]), int(values[b"t"])))
    return out


def _fetched(reply: Any) -> FetchedBundle | None:
    if reply is None:
        return None
    identity, signed, sig, packed, remaining = reply
    one_time: tuple[OneTimePrekey, ...] = ()
    if packed:
        key_id, size = _OT_HEAD.unpack_from(packed)
        start = _OT_HEAD.size
        one_time = (OneTimePrekey(key_id, bytes(packed[start:start + size]),
                                  bytes(packed[start + size:])),)
    return FetchedBundle(PrekeyBundle(bytes(identity), bytes(signed), bytes(sig), one_time),
                         int(remaining))


def _unbatch(replies: list[Any], sizes: list[int]) -> list[Any]:
    """One reply per operation again (see ``RedisStore._pipeline``): a ``qs_batch`` call's
    reply is the list of its operations' replies, or one error that all of them share."""
    out: list[Any] = []
    for reply, size in zip(replies, sizes, strict=True):
        if not size:
            out.append(reply)
        elif isinstance(reply, Exception):
            out.extend([reply] * size)
        else:
            out.extend(reply)
    return out


def _no_function(reply: Any) -> bool:
    return isinstance(reply, Exception) and "Function not found" in str(reply)


def _settle(op: _Op, ok: bool, value: Any) -> None:
    done = op.done
    if done is None:
        if not ok:
            log.error("redis store operation %s failed: %s", op.function, value)
        return
    if isinstance(done, asyncio.Future):
        if done.done():
            return
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)
        return
    try:
        done(ok, value)
    except Exception:
        log.exception("store callback failed")
