"""SQLite store: WAL, one writer thread, grouped commits.

All operations go through one queue to one thread holding one connection. The
thread takes everything queued since its last commit and runs it in a single
transaction, commits, then resolves the callers' futures. Under load, hundreds
of concurrent sends share one commit; idle, a send commits alone at once.
Commits start at most every ``commit_interval`` (4 ms): under load that groups
more sends per fsync and lets most acks of live deliveries reach the same
transaction as their send (then the envelope is written as a tombstone only).

The hot operations are cheap: the sends of a batch are a few multi-row INSERTs
into one table (``envelopes``; its unique (sender, msg) index is the de-dup
memory), the acks of a batch a few multi-row UPDATEs that turn envelopes into
tombstones (body NULL, kept until the TTL so a late repeat is still recognised).
Few statements matter: each one releases the GIL and must win it back from the
busy event loop (up to a switch interval each time). Rare operations run
under their own SAVEPOINT, so one that fails does not undo the others.
With ``synchronous=FULL`` (default) a commit survives power loss; ``NORMAL``
survives a killed process (the case the relay tests) and is faster.

The writer thread runs ``writer_nice`` steps nicer than the relay (Linux: nice is per
thread there). A delivery waits only on the event loop; the writer's commits delay
only the "stored" confirmations, so when the cores are busy the loop should get one
first. Without this, on two cores shared with its clients, the writer's bursts of
commit work queued the event loop behind it and set the tail of the delivery latency
(tests/bench/bench_relay.py; numbers in the README). The GIL bounds the inversion this
could cause: a loop waiting for the GIL gives up its core, which the writer then gets
unless other work at normal priority is ready for it, and the writer drops the GIL
within a switch interval, as at equal priority. Nor can the writer fall behind without
bound: past ``max_backlog`` queued operations senders wait
(:meth:`SqliteStore.wait_for_room`), which frees the CPU for it.

File streams live in ``streams`` (registration, expiry) and ``spool`` (binary
frames held for an endpoint that is offline or behind). Spool writes are rare
operations in the same grouped commits; the ``spool`` row id (AUTOINCREMENT, never
reused) is the delivery order, and ``(recipient, stream, seq)`` is unique so a
retransmitted frame is stored once. Spooled bytes per recipient are cached here
for the quota check, which runs in the writer thread (no two inserts race it).

Fair quotas (:func:`relay.store.base.quota_verdict`): beside each recipient's queue depth
and spooled bytes, the writer caches what each sender holds in them (the spool's sender is
the stream's other endpoint), loaded with the recipient's totals and kept in step by every
insert, ack and expiry. The global cap (``StoreLimits.max_store_bytes``) is checked against
the database's used pages (page count less free pages, so deleted rows make room), measured
at most once a second by the writer, plus the bytes it accepted since; the WAL file is not
counted (it is checkpointed back into the database).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from keysource.sqlite_schema import Migration, Schema, open_schema, split_statements
from relay.wire import OneTimePrekey, PrekeyBundle

from .base import (
    BindStatus,
    BundleRefused,
    EnqueueResult,
    EnqueueStatus,
    Envelope,
    FetchedBundle,
    QuotaVerdict,
    SpooledFrame,
    SpoolPage,
    SpoolResult,
    SpoolStatus,
    Store,
    StoreLimits,
    StreamRecord,
    StreamStatus,
    quota_verdict,
)

log = logging.getLogger("qsecret.relay.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS handles(
    handle TEXT PRIMARY KEY, identity BLOB NOT NULL, created INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS envelopes(
    seq INTEGER PRIMARY KEY, recipient TEXT NOT NULL, sender TEXT NOT NULL,
    msg TEXT NOT NULL, body BLOB, size INTEGER NOT NULL, ts INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS envelopes_once ON envelopes(sender, msg);
CREATE INDEX IF NOT EXISTS envelopes_queued ON envelopes(recipient, seq)
    WHERE body IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bundles(
    handle TEXT PRIMARY KEY, identity BLOB NOT NULL, signed BLOB NOT NULL,
    signed_sig BLOB NOT NULL, updated INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS one_time(
    handle TEXT NOT NULL, key_id INTEGER NOT NULL, key BLOB NOT NULL, sig BLOB NOT NULL,
    PRIMARY KEY(handle, key_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams(
    stream BLOB PRIMARY KEY, a TEXT NOT NULL, b TEXT NOT NULL, created INTEGER NOT NULL,
    expires INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS streams_opener ON streams(a);
CREATE INDEX IF NOT EXISTS streams_expiry ON streams(expires);
CREATE TABLE IF NOT EXISTS spool(
    id INTEGER PRIMARY KEY AUTOINCREMENT, recipient TEXT NOT NULL, stream BLOB NOT NULL,
    seq INTEGER NOT NULL, size INTEGER NOT NULL, expires INTEGER NOT NULL, data BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS spool_once ON spool(recipient, stream, seq);
CREATE INDEX IF NOT EXISTS spool_order ON spool(recipient);
CREATE INDEX IF NOT EXISTS spool_stream ON spool(stream);
CREATE INDEX IF NOT EXISTS spool_expiry ON spool(expires);
"""

# A data dir from before the envelopes table (queue + seen): move both over once.
_MIGRATE_V0 = """
INSERT OR IGNORE INTO envelopes(seq, recipient, sender, msg, body, size, ts)
    SELECT seq, recipient, sender, msg, body, length(body), ts FROM queue;
INSERT OR IGNORE INTO envelopes(seq, recipient, sender, msg, body, size, ts)
    SELECT id - (SELECT max(id) FROM seen) - 1, '', sender, msg, NULL, 0, ts FROM seen;
INSERT OR REPLACE INTO meta VALUES('last_seq',
    coalesce((SELECT seq FROM sqlite_sequence WHERE name='queue'), 0));
DROP TABLE queue;
DROP TABLE seen;
"""


def _adopt_unversioned(db: sqlite3.Connection) -> None:
    """A file from before versions: move a data dir of the queue + seen era over, once."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE name='seen'").fetchone():
        for statement in split_statements(_MIGRATE_V0):
            db.execute(statement)


# Version 1 is SCHEMA (files from before versions were recorded hold it, or the queue + seen
# tables that _adopt_unversioned moves over); see keysource.sqlite_schema.
RELAY_SCHEMA = Schema(
    kind="relay store",
    baseline=SCHEMA,
    marker_tables=frozenset({"handles", "envelopes", "queue", "seen", "bundles"}),
    migrations=(
        # A group file stream's opener ends its upload (stream_close) long before every
        # member has fetched its copy: the registration stays for them, but no longer
        # counts toward the opener's open streams, and goes once the last copy is acked.
        Migration(version=2, summary="streams.ended: a group upload the opener has ended",
                  sql="ALTER TABLE streams ADD COLUMN ended INTEGER NOT NULL DEFAULT 0"),
    ),
    adopt=_adopt_unversioned,
)

# The hot statements take many rows at once, in chunks of these sizes: a handful of
# distinct (cached) statements, and one step per chunk instead of one per row.
_CHUNKS = (256, 64, 16, 4, 1)
_READ_CHUNK = 500  # seqs per SELECT ... IN (...) (far below SQLite's variable limit)
_INSERT_ROWS = {n: "INSERT OR IGNORE INTO envelopes VALUES "
                   + ",".join(["(?, ?, ?, ?, ?, ?, ?)"] * n) for n in _CHUNKS}
_ACK_ROWS = {n: "UPDATE envelopes SET body=NULL FROM (VALUES "
                + ",".join(["(?, ?)"] * n) + ") AS a WHERE envelopes.seq=a.column1 "
                "AND envelopes.recipient=a.column2 AND envelopes.body IS NOT NULL "
                "RETURNING envelopes.seq, envelopes.recipient, envelopes.size, envelopes.sender"
             for n in _CHUNKS}

_Op = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any] | None]
_Result = tuple[asyncio.Future[Any] | None, bool, Any]
_STOP = object()
_ENQUEUE: Any = object()  # marker ops the batch runner groups (see _run_batch)
_ACK: Any = object()
_EXPIRE_SCAN = 5000  # rows looked at per expiry round (rows are in time order)
_MEASURE_EVERY = 1.0  # seconds between measurements of the file for the global cap
_SPOOL_SENDER = "CASE WHEN st.a = sp.recipient THEN st.b ELSE st.a END"
_STORE_STATUS = {QuotaVerdict.RECIPIENT: EnqueueStatus.QUOTA_EXCEEDED,
                 QuotaVerdict.SHARE: EnqueueStatus.SHARE_EXCEEDED,
                 QuotaVerdict.STORE: EnqueueStatus.STORE_FULL}
_SPOOL_STATUS = {QuotaVerdict.RECIPIENT: SpoolStatus.QUOTA_EXCEEDED,
                 QuotaVerdict.SHARE: SpoolStatus.SHARE_EXCEEDED,
                 QuotaVerdict.STORE: SpoolStatus.STORE_FULL}


def _barrier(db: sqlite3.Connection) -> None:
    """An operation that only waits its turn: done once everything before it is committed."""


def _s64(seq: int) -> int:
    """A binary frame's uint64 sequence as SQLite's signed 64-bit integer (and back)."""
    return seq - (1 << 64) if seq >= 1 << 63 else seq


def _u64(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


class SqliteStore(Store):
    """The embedded default store (see module docstring)."""

    def __init__(
        self,
        path: str | Path,
        limits: StoreLimits | None = None,
        *,
        synchronous: str = "FULL",
        max_batch: int = 2048,
        max_backlog: int = 8192,
        commit_interval: float = 0.004,
        writer_nice: int = 19,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        if not 0 <= writer_nice <= 39:
            raise ValueError("writer_nice must be in [0, 39]")
        self.path = Path(path)
        self.limits = limits or StoreLimits()
        self.synchronous = synchronous
        self.max_batch = max_batch
        self.max_backlog = max_backlog
        self.commit_interval = commit_interval
        self.writer_nice = writer_nice
        self.writer_tid: int | None = None  # the writer thread's kernel id, once it runs
        self._ops: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Owned by the writer thread only (except the int, read for /metrics).
        self._handles: dict[str, bytes] = {}
        self._depth: dict[str, list[int]] = {}  # recipient -> [count, bytes]
        self._shares: dict[str, dict[str, list[int]]] = {}  # recipient -> sender -> same
        self._total_depth = 0
        self._spooled: dict[str, int] = {}  # recipient -> spooled bytes
        self._spool_shares: dict[str, dict[str, int]] = {}  # recipient -> sender -> bytes
        self._spool_total = 0  # read for /metrics
        self._disk_used = 0  # database bytes in use when last measured (global cap only)
        self._since_measure = 0  # bytes accepted since then
        self._measure_due = 0.0
        self._measured_in = -1  # the batch (commit number) of the last measure
        self._last_ts = 0
        self._last_seq = 0
        self.commits = 0  # batches committed (for tests and metrics)
        self._room: asyncio.Event | None = None  # set when the backlog is under the limit
        self._want_room = False  # a sender waits on _room

    # ------------------------------------------------------------ plumbing

    def describe(self) -> str:
        return f"sqlite {self.path} (synchronous {self.synchronous})"

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="relay-sqlite", daemon=True
        )
        self._thread.start()
        await ready

    async def close(self) -> None:
        if self._thread is None:
            return
        self._ops.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def _call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        if self._thread is None or self._loop is None:
            raise RuntimeError("store is not open")
        future = self._loop.create_future()
        self._ops.put((fn, args, future))
        return future

    def behind(self) -> bool:
        """True when the writer has more than ``max_backlog`` operations queued."""
        return self._ops.qsize() > self.max_backlog

    async def wait_for_room(self) -> None:
        """Backpressure: wait while the writer is more than ``max_backlog`` operations behind.

        Waiters sleep on one event that the writer sets after a commit once the
        backlog is back under the limit (no polling: thousands of senders may wait).
        """
        deadline = time.monotonic() + 10.0  # then let the caller through anyway
        while self.behind():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            self._want_room = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), min(left, 0.1))

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a write nobody waits for (it still runs in order, in a grouped commit)."""
        self._ops.put((fn, args, None))

    def _run(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None
        try:
            db = self._connect()
        except Exception as exc:  # reported to open(), which raises it
            self._loop.call_soon_threadsafe(_settle, [(ready, False, exc)])
            return
        self._lower_priority()
        self._loop.call_soon_threadsafe(_settle, [(ready, True, None)])
        stop = False
        started = 0.0
        while not stop:
            batch: list[_Op] = []
            item = self._ops.get()
            # Commits start at most once per commit_interval: after a quiet spell the
            # first operation commits at once; under load, what arrives meanwhile joins.
            # Sleep out the rest of the interval rather than wake for every operation
            # (each wake-up would take the GIL from the event loop).
            wait = started + self.commit_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            while True:
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
                if len(batch) >= self.max_batch:
                    break
                try:
                    item = self._ops.get_nowait()
                except queue.Empty:
                    break
            if batch:
                started = time.monotonic()
                self._run_batch(db, batch)
        db.close()

    def _lower_priority(self) -> None:
        """Make this (the writer) thread ``writer_nice`` steps nicer (see module docstring).

        Only on Linux, where nice applies to the thread alone; elsewhere it would slow the
        whole relay, event loop included. Nice 19 is the floor.
        """
        self.writer_tid = threading.get_native_id()
        if not self.writer_nice:
            return
        if not sys.platform.startswith("linux"):
            log.info("sqlite writer keeps the relay's priority: per-thread nice is Linux-only")
            return
        try:
            nice = os.getpriority(os.PRIO_PROCESS, self.writer_tid)
            os.setpriority(os.PRIO_PROCESS, self.writer_tid, min(19, nice + self.writer_nice))
        except OSError as exc:  # a sandbox may forbid it: the relay still works, as before
            log.warning("cannot lower the sqlite writer thread's priority: %s", exc)

    def _run_batch(self, db: sqlite3.Connection, batch: list[_Op]) -> None:
        results: list[_Result] = []
        sends: list[tuple[Envelope, asyncio.Future[Any] | None]] = []
        acks: list[tuple[str, tuple[int, ...], asyncio.Future[Any] | None]] = []
        if self.limits.max_store_bytes and time.monotonic() >= self._measure_due:
            self._measure(db)
            self._measured_in = -1  # measured between batches: this one may measure again
        began = time.perf_counter()
        try:
            db.execute("BEGIN IMMEDIATE")
            for fn, args, future in batch:
                if fn is _ENQUEUE:
                    sends.append((args[0], future))
                elif fn is _ACK:
                    acks.append((args[0], args[1], future))
                else:
                    # A rare operation sees every earlier send and ack: flush them first.
                    self._flush_hot(db, sends, acks, results)
                    results.append(self._run_one(db, fn, args, future))
            self._flush_hot(db, sends, acks, results)
            db.execute("COMMIT")
            self.commits += 1
            if self.observe_commit is not None:
                self.observe_commit(time.perf_counter() - began)
        except sqlite3.Error as exc:
            # The whole batch is lost: nobody is told "stored" for any of it.
            log.error("sqlite commit failed (%s): %d operations refused", exc, len(batch))
            try:
                db.rollback()
            except sqlite3.Error:
                log.exception("sqlite rollback failed")
            self._reload(db)
            results = [(future, False, exc) for _, _, future in batch]
        waited = [r for r in results if r[0] is not None]
        if self._want_room and self._ops.qsize() <= self.max_backlog:
            self._want_room = False
            waited.append((self._open_room, True, None))
        if waited:
            try:
                self._loop.call_soon_threadsafe(_settle, waited)  # type: ignore[union-attr]
            except RuntimeError:  # loop closed during shutdown: nobody is waiting any more
                pass

    def _measure(self, db: sqlite3.Connection, unwritten: int = 0) -> None:
        """Re-read how many bytes of the database are in use, for the global cap
        (``unwritten``: bytes accepted in this batch but not inserted yet)."""
        try:
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
            size = db.execute("PRAGMA page_size").fetchone()[0]
        except sqlite3.Error as exc:  # keep the last measure; the commit will report the fault
            log.warning("cannot measure the store for its cap: %s", exc)
            return
        self._disk_used = (pages - free) * size
        self._since_measure = unwritten
        self._measure_due = time.monotonic() + _MEASURE_EVERY
        self._measured_in = self.commits

    def _room_after_all(self, db: sqlite3.Connection, size: int, unwritten: int = 0) -> bool:
        """The cap refused ``size`` bytes on an estimate: measure afresh (once per batch, so
        deletions count at once and a flood of refusals costs little) and look again."""
        if self._measured_in == self.commits:
            return False
        self._measure(db, unwritten)
        return self._store_used() + size <= self.limits.max_store_bytes

    def _store_used(self) -> int:
        """The store's size for the global cap: measured, plus what was accepted since."""
        return self._disk_used + self._since_measure

    def _open_room(self, ok: bool, value: Any) -> None:
        if self._room is not None:
            self._room.set()

    @staticmethod
    def _run_one(db: sqlite3.Connection, fn: Callable[..., Any], args: tuple[Any, ...],
                 future: asyncio.Future[Any] | None) -> _Result:
        db.execute("SAVEPOINT op")
        try:
            value = fn(db, *args)
        except Exception as exc:
            db.execute("ROLLBACK TO op")
            db.execute("RELEASE op")
            return (future, False, exc)
        db.execute("RELEASE op")
        return (future, True, value)

    def _flush_hot(self, db: sqlite3.Connection,
                   sends: list[tuple[Envelope, asyncio.Future[Any] | None]],
                   acks: list[tuple[str, tuple[int, ...], asyncio.Future[Any] | None]],
                   results: list[_Result]) -> None:
        """Write the grouped sends, then the grouped acks (an ack never precedes its send).

        An envelope delivered live and acked before its send was committed is written
        straight as a tombstone: in one transaction, insert-then-delete and inserting
        the tombstone leave the same committed state, so durability is unchanged.
        """
        acked: dict[int, str] = {}
        if sends and acks:
            for recipient, seqs, _ in acks:
                for seq in seqs:
                    acked[seq] = recipient
        absorbed: set[int] = set()
        if sends:
            absorbed = self._enqueue_many(db, sends, results, acked)
            sends.clear()
        if acks:
            rests: list[tuple[int, ...]] = []
            for _, seqs, _ in acks:
                rest = seqs
                if absorbed:
                    rest = tuple(seq for seq in seqs if seq not in absorbed)
                    absorbed.difference_update(seqs)
                rests.append(rest)
            # One UPDATE for every ack of the batch (not one per ack frame): each
            # statement lets the event loop's thread take the GIL back, so fewer is faster.
            removed = self._ack_many(db, [(recipient, rest) for (recipient, _, _), rest
                                          in zip(acks, rests, strict=True)])
            for (_, seqs, future), rest, count in zip(acks, rests, removed, strict=True):
                results.append((future, True, len(seqs) - len(rest) + count))
            acks.clear()

    def _enqueue_many(self, db: sqlite3.Connection,
                      sends: list[tuple[Envelope, asyncio.Future[Any] | None]],
                      results: list[_Result], acked: dict[int, str]) -> set[int]:
        """Insert the sends in one statement; return the seqs stored as tombstones."""
        limits = self.limits
        quota, quota_bytes = limits.quota_messages, limits.quota_bytes
        share, share_bytes = limits.share_messages, limits.share_bytes
        cap = limits.max_store_bytes
        rows: list[tuple[Any, ...]] = []
        accepted: list[tuple[Envelope, asyncio.Future[Any] | None, list[int], int]] = []
        unwritten = 0  # bytes accepted below, inserted after the loop
        for envelope, future in sends:
            recipient, body = envelope.recipient, envelope.body
            if recipient not in self._handles:
                results.append((future, True, EnqueueResult(EnqueueStatus.UNKNOWN_RECIPIENT)))
                continue
            depth = self._depth_of(db, recipient)
            shares = self._shares[recipient]
            mine = shares.get(envelope.sender)
            if mine is None:
                mine = [0, 0]  # joins ``shares`` once it holds something
            size = len(body)
            # The common case inline (it fits every limit: quota_verdict would say OK);
            # otherwise the policy decides, and names whose limit it is.
            if (depth[0] < quota and depth[1] + size <= quota_bytes and mine[0] < share
                    and mine[1] + size <= share_bytes
                    and (not cap or self._store_used() + size <= cap)):
                verdict = QuotaVerdict.OK
            else:
                verdict = quota_verdict(size, held=depth[0], held_bytes=depth[1], quota=quota,
                                        quota_bytes=quota_bytes, share_held=mine[0],
                                        share_held_bytes=mine[1], share=share,
                                        share_bytes=share_bytes,
                                        store_used=self._store_used() if cap else 0,
                                        store_cap=cap)
                if verdict is QuotaVerdict.STORE and self._room_after_all(db, size, unwritten):
                    verdict = QuotaVerdict.OK
            if verdict is not QuotaVerdict.OK:
                status = (EnqueueStatus.DUPLICATE if self._seq_of(db, envelope) is not None
                          else _STORE_STATUS[verdict])
                results.append((future, True, EnqueueResult(status)))
                continue
            if acked.get(envelope.seq) == recipient:  # already delivered and acked
                rows.append((envelope.seq, recipient, envelope.sender, envelope.msg, None, 0,
                             envelope.ts))
                accepted.append((envelope, future, depth, 0))
                continue
            depth[0] += 1
            depth[1] += size
            mine[0] += 1
            mine[1] += size
            if mine[0] == 1:
                shares[envelope.sender] = mine
            self._since_measure += size
            unwritten += size
            rows.append((envelope.seq, recipient, envelope.sender, envelope.msg, body, size,
                         envelope.ts))
            accepted.append((envelope, future, depth, 1))
        absorbed: set[int] = set()
        if not rows:
            return absorbed
        before = db.total_changes
        for chunk in _chunks(rows):
            db.execute(_INSERT_ROWS[len(chunk)], [value for row in chunk for value in row])
        all_new = db.total_changes - before == len(rows)
        queued = 0
        for envelope, future, depth, counted in accepted:
            # Repeats of (sender, msg) were ignored by the insert; tell which, only if any.
            if all_new or self._seq_of(db, envelope) == envelope.seq:
                queued += counted
                if not counted:
                    absorbed.add(envelope.seq)
                results.append((future, True, EnqueueResult(EnqueueStatus.STORED, envelope)))
            else:
                size = len(envelope.body) * counted
                depth[0] -= counted
                depth[1] -= size
                if counted:
                    self._unshare(envelope.recipient, envelope.sender, size)
                self._since_measure -= size
                results.append((future, True, EnqueueResult(EnqueueStatus.DUPLICATE)))
        self._total_depth += queued
        db.execute("INSERT OR REPLACE INTO meta VALUES('last_seq', ?)", (rows[-1][0],))
        return absorbed

    @staticmethod
    def _seq_of(db: sqlite3.Connection, envelope: Envelope) -> int | None:
        row = db.execute("SELECT seq FROM envelopes WHERE sender=? AND msg=?",
                         (envelope.sender, envelope.msg)).fetchone()
        return row[0] if row else None

    def _reload(self, db: sqlite3.Connection) -> None:
        """Re-read what the writer caches, after a rollback made it stale."""
        self._handles = dict(db.execute("SELECT handle, identity FROM handles"))
        self._depth.clear()
        self._shares.clear()
        self._total_depth = self._count_all(db)
        self._spooled.clear()
        self._spool_shares.clear()
        self._measure_due = 0.0  # measure again before the next batch
        self._spool_total = db.execute("SELECT coalesce(sum(size), 0) FROM spool").fetchone()[0]

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            open_schema(db, RELAY_SCHEMA, self.path, pragmas=(
                "PRAGMA journal_mode=WAL",
                f"PRAGMA synchronous={self.synchronous}",
                "PRAGMA busy_timeout=5000",
                # Pages are read through a memory map and kept in a larger cache: fewer
                # pread() system calls on the writer thread under load.
                "PRAGMA mmap_size=268435456",
                "PRAGMA cache_size=-32768",
            ))
        except BaseException:
            db.close()
            raise
        self._reload(db)
        row = db.execute("SELECT max(ts) FROM envelopes").fetchone()
        self._last_ts = row[0] or 0
        # Never reuse a number, even of an expired envelope: the high mark is kept in meta.
        row = db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        top = db.execute("SELECT max(seq) FROM envelopes").fetchone()[0] or 0
        self._last_seq = max(row[0] if row else 0, top)
        return db

    @staticmethod
    def _count_all(db: sqlite3.Connection) -> int:
        return db.execute("SELECT count(*) FROM envelopes WHERE body IS NOT NULL").fetchone()[0]

    def _now_ms(self) -> int:
        return int(time.time() * 1000)

    def _depth_of(self, db: sqlite3.Connection, recipient: str) -> list[int]:
        """``recipient``'s [queued envelopes, bytes], cached with every sender's share of
        them (``_shares``) on first use."""
        depth = self._depth.get(recipient)
        if depth is None:
            shares = {sender: [count, size] for sender, count, size in db.execute(
                "SELECT sender, count(*), sum(size) FROM envelopes "
                "WHERE recipient=? AND body IS NOT NULL GROUP BY sender",
                (recipient,),
            )}
            self._shares[recipient] = shares
            depth = self._depth[recipient] = [sum(c for c, _ in shares.values()),
                                              sum(b for _, b in shares.values())]
        return depth

    # ------------------------------------------------------------ identities

    async def bind_identity(self, handle: str, identity: bytes) -> BindStatus:
        return await self._call(self._bind, handle, identity)

    def _bind(self, db: sqlite3.Connection, handle: str, identity: bytes) -> BindStatus:
        bound = self._handles.get(handle)
        if bound is not None:
            return BindStatus.MATCH if bound == identity else BindStatus.MISMATCH
        db.execute("INSERT INTO handles VALUES (?, ?, ?)", (handle, identity, self._now_ms()))
        self._handles[handle] = identity
        return BindStatus.NEW

    async def identity_of(self, handle: str) -> bytes | None:
        return self._handles.get(handle)  # dict reads are atomic; written only by the thread

    # ------------------------------------------------------------ queues

    def new_envelope(self, sender: str, recipient: str, msg: str, body: bytes) -> Envelope:
        self._last_seq += 1
        self._last_ts = max(self._last_ts, int(time.time() * 1000))
        return Envelope(self._last_seq, recipient, sender, msg, body, self._last_ts)

    async def enqueue(self, envelope: Envelope) -> EnqueueResult:
        return await self.enqueue_future(envelope)

    def enqueue_future(self, envelope: Envelope) -> asyncio.Future[EnqueueResult]:
        """Like :meth:`enqueue` but returns the future at once."""
        return self._call(_ENQUEUE, envelope)

    def enqueue_then(self, envelope: Envelope, callback: Callable[[bool, Any], None]) -> None:
        """The relay's hot path: queue the envelope; after the commit, on the event loop,
        call ``callback(True, EnqueueResult)`` or ``callback(False, exception)``.

        No future per envelope: the results of one commit are handed out in one pass.
        """
        if self._thread is None or self._loop is None:
            raise RuntimeError("store is not open")
        self._ops.put((_ENQUEUE, (envelope,), callback))

    async def pending(self, recipient: str, limit: int) -> list[Envelope]:
        return await self._call(self._pending, recipient, limit)

    def _pending(self, db: sqlite3.Connection, recipient: str, limit: int) -> list[Envelope]:
        rows = db.execute(
            "SELECT seq, sender, msg, body, ts FROM envelopes WHERE recipient=? "
            "AND body IS NOT NULL ORDER BY seq LIMIT ?",
            (recipient, limit),
        ).fetchall()
        return [Envelope(seq, recipient, sender, msg, body, ts)
                for seq, sender, msg, body, ts in rows]

    async def envelopes(self, recipient: str, seqs: Sequence[int]) -> list[Envelope]:
        return await self._call(self._envelopes, recipient, tuple(seqs))

    @staticmethod
    def _envelopes(db: sqlite3.Connection, recipient: str,
                   seqs: tuple[int, ...]) -> list[Envelope]:
        rows: list[tuple[int, str, str, bytes, int]] = []
        for start in range(0, len(seqs), _READ_CHUNK):
            chunk = seqs[start:start + _READ_CHUNK]
            rows.extend(db.execute(
                "SELECT seq, sender, msg, body, ts FROM envelopes WHERE recipient=? "
                f"AND body IS NOT NULL AND seq IN ({','.join('?' * len(chunk))})",
                (recipient, *chunk),
            ))
        rows.sort()
        return [Envelope(seq, recipient, sender, msg, body, ts)
                for seq, sender, msg, body, ts in rows]

    async def ack(self, recipient: str, seqs: Sequence[int]) -> int:
        return await self._call(_ACK, recipient, tuple(seqs))

    def ack_nowait(self, recipient: str, seqs: Sequence[int]) -> None:
        """Queue the deletion without waiting (runs after every earlier operation)."""
        self._submit(_ACK, recipient, tuple(seqs))

    def _ack_many(self, db: sqlite3.Connection,
                  acks: list[tuple[str, tuple[int, ...]]]) -> list[int]:
        """Turn the acked envelopes into tombstones; return how many each ack removed.

        The recipient is part of the match: a client can only ever delete from its own
        queue. The row stays as a tombstone (no body) so a late repeat of its msg is
        still a duplicate. A seq acked twice counts for the first ack only, as if the
        acks had run one after the other.
        """
        pairs = [(seq, recipient) for recipient, seqs in acks for seq in seqs]
        # (seq, recipient) -> (size, sender), for rows changed
        done: dict[tuple[int, str], tuple[int, str]] = {}
        for chunk in _chunks(pairs):
            params = [value for pair in chunk for value in pair]
            for seq, recipient, size, sender in db.execute(_ACK_ROWS[len(chunk)], params):
                done[(seq, recipient)] = (size, sender)
        counts = []
        for recipient, seqs in acks:
            count = size_sum = 0
            # Counts loaded after the UPDATE would already leave these out: adjust only
            # cached ones (a recipient that acks has its depth cached since its login).
            depth = self._depth.get(recipient)
            shares = self._shares.get(recipient) if depth is not None else None
            for seq in seqs:
                row = done.pop((seq, recipient), None)
                if row is not None:
                    count += 1
                    size_sum += row[0]
                    if shares is not None:  # _unshare, inline: this runs for every ack
                        mine = shares.get(row[1])
                        if mine is not None:
                            mine[0] -= 1
                            mine[1] -= row[0]
                            if mine[0] <= 0:
                                del shares[row[1]]
            if count:
                if depth is not None:
                    depth[0] -= count
                    depth[1] -= size_sum
                self._total_depth -= count
            counts.append(count)
        return counts

    def _unshare(self, recipient: str, sender: str, size: int, count: int = 1) -> None:
        """A sender's queued envelopes left ``recipient``'s queue: shrink its share."""
        shares = self._shares[recipient]
        mine = shares.get(sender)
        if mine is None:
            return
        mine[0] -= count
        mine[1] -= size
        if mine[0] <= 0:  # no entry per sender that holds nothing: memory follows the queue
            del shares[sender]

    async def queue_depth(self, recipient: str) -> int:
        return await self._call(lambda db: self._depth_of(db, recipient)[0])

    def total_queue_depth(self) -> int:
        return self._total_depth

    async def expire(self) -> int:
        return await self._call(self._expire)

    def _expire(self, db: sqlite3.Connection) -> int:
        cutoff = int((time.time() - self.limits.ttl_seconds) * 1000)
        # Rows are in time order, so the expired ones (queued and tombstones) are a prefix.
        last = db.execute(
            "SELECT max(seq) FROM (SELECT seq, ts FROM envelopes ORDER BY seq LIMIT ?) "
            "WHERE ts < ?",
            (_EXPIRE_SCAN, cutoff),
        ).fetchone()[0]
        dropped = 0
        if last is not None:
            for recipient, sender, count, size in db.execute(
                "SELECT recipient, sender, count(*), sum(size) FROM envelopes "
                "WHERE seq<=? AND body IS NOT NULL GROUP BY recipient, sender",
                (last,),
            ).fetchall():
                depth = self._depth.get(recipient)
                if depth is not None:
                    depth[0] -= count
                    depth[1] -= size
                    self._unshare(recipient, sender, size, count)
                dropped += count
            db.execute("DELETE FROM envelopes WHERE seq<=?", (last,))
            self._total_depth -= dropped
        return dropped

    # ------------------------------------------------------------ prekeys

    async def put_bundle(self, handle: str, bundle: PrekeyBundle) -> int:
        return await self._call(self._put_bundle, handle, bundle)

    def _put_bundle(self, db: sqlite3.Connection, handle: str, bundle: PrekeyBundle) -> int:
        # The upload replaces the one-time prekeys held: the owner prunes a private key only
        # once an upload without its public half is acknowledged (client/messenger/prekeys.py).
        total = len({k.key_id for k in bundle.one_time})
        if total > self.limits.max_one_time_stored:
            raise BundleRefused(
                f"{total} one-time prekeys would be stored; the limit is "
                f"{self.limits.max_one_time_stored}"
            )
        db.execute(
            "INSERT OR REPLACE INTO bundles VALUES (?, ?, ?, ?, ?)",
            (handle, bundle.identity, bundle.signed, bundle.signed_sig, self._now_ms()),
        )
        db.execute("DELETE FROM one_time WHERE handle=?", (handle,))
        db.executemany(
            "INSERT OR REPLACE INTO one_time VALUES (?, ?, ?, ?)",
            [(handle, k.key_id, k.key, k.sig) for k in bundle.one_time],
        )
        return total

    async def take_bundle(self, handle: str) -> FetchedBundle | None:
        return await self._call(self._take_bundle, handle)

    def _take_bundle(self, db: sqlite3.Connection, handle: str) -> FetchedBundle | None:
        row = db.execute(
            "SELECT identity, signed, signed_sig FROM bundles WHERE handle=?", (handle,)
        ).fetchone()
        if row is None:
            return None
        # One writer thread, one transaction: two fetches can never take the same key.
        taken = db.execute(
            "DELETE FROM one_time WHERE handle=? AND key_id="
            "(SELECT min(key_id) FROM one_time WHERE handle=?) RETURNING key_id, key, sig",
            (handle, handle),
        ).fetchone()
        remaining = db.execute(
            "SELECT count(*) FROM one_time WHERE handle=?", (handle,)
        ).fetchone()[0]
        one_time = (OneTimePrekey(*taken),) if taken else ()
        return FetchedBundle(PrekeyBundle(row[0], row[1], row[2], one_time), remaining)

    async def prekey_count(self, handle: str) -> int:
        return await self._call(
            lambda db: db.execute(
                "SELECT count(*) FROM one_time WHERE handle=?", (handle,)
            ).fetchone()[0]
        )


    # ------------------------------------------------------------ file streams

    async def register_stream(self, stream: bytes, a: str, b: str, now_ms: int, expires_ms: int,
                              max_per_handle: int) -> StreamStatus:
        return await self._call(self._register_stream, stream, a, b, now_ms, expires_ms,
                                max_per_handle)

    def _register_stream(self, db: sqlite3.Connection, stream: bytes, a: str, b: str,
                         now_ms: int, expires_ms: int, max_per_handle: int) -> StreamStatus:
        row = db.execute("SELECT a, b, expires FROM streams WHERE stream=?",
                         (stream,)).fetchone()
        if row is not None:
            if row[2] > now_ms:
                if (row[0], row[1]) != (a, b):
                    return StreamStatus.TAKEN
                # Opened again (a resumed upload): it is open, and counts, again.
                db.execute("UPDATE streams SET expires=max(expires, ?), ended=0 WHERE stream=?",
                           (expires_ms, stream))
                return StreamStatus.SAME
            self._close_stream(db, stream)  # expired, not yet swept: gone
        opened = db.execute("SELECT count(*) FROM streams WHERE a=? AND expires>? AND ended=0",
                            (a, now_ms)).fetchone()[0]
        if opened >= max_per_handle:
            return StreamStatus.TOO_MANY
        db.execute("INSERT INTO streams(stream, a, b, created, expires) VALUES (?, ?, ?, ?, ?)",
                   (stream, a, b, now_ms, expires_ms))
        return StreamStatus.NEW

    async def file_streams(self, now_ms: int) -> list[StreamRecord]:
        rows = await self._call(lambda db: db.execute(
            "SELECT stream, a, b, created, expires FROM streams WHERE expires>?",
            (now_ms,)).fetchall())
        return [StreamRecord(*row) for row in rows]

    async def close_stream(self, stream: bytes) -> int:
        return await self._call(self._close_stream, stream)

    def _close_stream(self, db: sqlite3.Connection, stream: bytes) -> int:
        ends = db.execute("DELETE FROM streams WHERE stream=? RETURNING a, b",
                          (stream,)).fetchone()
        return self._unspool(db.execute(
            "DELETE FROM spool WHERE stream=? RETURNING recipient, size", (stream,)).fetchall(),
            ends)

    async def end_upload(self, stream: bytes) -> bool:
        return await self._call(self._end_upload, stream)

    def _end_upload(self, db: sqlite3.Connection, stream: bytes) -> bool:
        if db.execute("UPDATE streams SET ended=1 WHERE stream=?", (stream,)).rowcount == 0:
            return False
        return self._drop_if_drained(db, stream)

    def _drop_if_drained(self, db: sqlite3.Connection, stream: bytes) -> bool:
        """Delete an ended upload's registration once no copy of it is spooled."""
        return db.execute(
            "DELETE FROM streams WHERE stream=? AND ended=1 "
            "AND NOT EXISTS (SELECT 1 FROM spool WHERE stream=?)", (stream, stream)).rowcount > 0

    def _unspool(self, rows: list[tuple[str, int]], ends: tuple[str, str] | None) -> int:
        """Account for deleted spool rows (recipient, size) of one stream whose endpoints
        are ``ends`` (None: unknown, no share to adjust); return how many."""
        for recipient, size in rows:
            if recipient in self._spooled:
                self._spooled[recipient] -= size
                if ends is not None:
                    shares = self._spool_shares[recipient]
                    sender = ends[1] if ends[0] == recipient else ends[0]
                    left = shares.get(sender, 0) - size
                    if left > 0:
                        shares[sender] = left
                    else:
                        shares.pop(sender, None)
            self._spool_total -= size
        return len(rows)

    @staticmethod
    def _ends(db: sqlite3.Connection, stream: bytes) -> tuple[str, str] | None:
        return db.execute("SELECT a, b FROM streams WHERE stream=?", (stream,)).fetchone()

    def _spooled_of(self, db: sqlite3.Connection, recipient: str) -> int:
        """Bytes spooled for ``recipient``, cached with each sending endpoint's share of
        them (``_spool_shares``) on first use."""
        used = self._spooled.get(recipient)
        if used is None:
            shares: dict[str, int] = {}
            used = 0
            for sender, size in db.execute(
                    f"SELECT {_SPOOL_SENDER}, sum(sp.size) FROM spool sp LEFT JOIN streams st "
                    "ON st.stream = sp.stream WHERE sp.recipient=? GROUP BY 1", (recipient,)):
                used += size
                if sender is not None:  # a frame outlives its stream only inside a delete
                    shares[sender] = size
            self._spooled[recipient] = used
            self._spool_shares[recipient] = shares
        return used

    async def spool(self, recipient: str, stream: bytes, seq: int, data: bytes, now_ms: int,
                    expires_ms: int, quota_bytes: int) -> SpoolResult:
        return await self._call(self._spool, recipient, stream, seq, data, now_ms, expires_ms,
                                quota_bytes)

    def spool_then(self, recipient: str, stream: bytes, seq: int, data: bytes, now_ms: int,
                   expires_ms: int, quota_bytes: int,
                   callback: Callable[[bool, Any], None]) -> None:
        """No future: the callback runs on the event loop after the commit (see _settle)."""
        if self._thread is None or self._loop is None:
            raise RuntimeError("store is not open")
        self._ops.put((self._spool, (recipient, stream, seq, data, now_ms, expires_ms,
                                     quota_bytes), callback))

    def _spool(self, db: sqlite3.Connection, recipient: str, stream: bytes, seq: int,
               data: bytes, now_ms: int, expires_ms: int, quota_bytes: int) -> SpoolResult:
        # Still registered (and not expired)? Then it lives at least as long as this frame.
        ends = db.execute(
            "UPDATE streams SET expires=max(expires, ?) WHERE stream=? AND expires>? "
            "RETURNING a, b", (expires_ms, stream, now_ms)).fetchone()
        if ends is None:
            return SpoolResult(SpoolStatus.UNKNOWN_STREAM)
        sender = ends[1] if ends[0] == recipient else ends[0]
        used = self._spooled_of(db, recipient)
        mine = self._spool_shares[recipient].get(sender, 0)
        size = len(data)
        limits = self.limits
        # The spool counts bytes only: held=0 of quota=1 (and share) leaves counts out.
        verdict = quota_verdict(size, held=0, held_bytes=used, quota=1, quota_bytes=quota_bytes,
                                share_held=0, share_held_bytes=mine, share=1,
                                share_bytes=limits.share_of(quota_bytes),
                                store_used=self._store_used(),
                                store_cap=limits.max_store_bytes)
        if verdict is QuotaVerdict.STORE and self._room_after_all(db, size):
            verdict = QuotaVerdict.OK
        if verdict is not QuotaVerdict.OK:
            held = db.execute("SELECT 1 FROM spool WHERE recipient=? AND stream=? AND seq=?",
                              (recipient, stream, _s64(seq))).fetchone()
            return SpoolResult(SpoolStatus.DUPLICATE if held else _SPOOL_STATUS[verdict])
        row = db.execute(
            "INSERT OR IGNORE INTO spool(recipient, stream, seq, size, expires, data) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (recipient, stream, _s64(seq), size, expires_ms, data)).fetchone()
        if row is None:  # a retransmission: same (recipient, stream, seq) already held
            return SpoolResult(SpoolStatus.DUPLICATE)
        self._spooled[recipient] = used + size
        self._spool_shares[recipient][sender] = mine + size
        self._spool_total += size
        self._since_measure += size
        return SpoolResult(SpoolStatus.STORED, row[0])

    async def spool_page(self, recipient: str, after: int, limit: int,
                         now_ms: int) -> SpoolPage:
        return await self._call(self._spool_page, recipient, after, limit, now_ms)

    @staticmethod
    def _spool_page(db: sqlite3.Connection, recipient: str, after: int, limit: int,
                    now_ms: int) -> SpoolPage:
        top = db.execute("SELECT coalesce(max(id), 0) FROM spool").fetchone()[0]
        rows = db.execute(
            "SELECT id, stream, seq, data FROM spool WHERE recipient=? AND id>? AND expires>? "
            "ORDER BY id LIMIT ?", (recipient, after, now_ms, limit)).fetchall()
        return SpoolPage([SpooledFrame(row, stream, _u64(seq), data)
                          for row, stream, seq, data in rows], top)

    async def spool_ack(self, recipient: str, stream: bytes, seqs: Sequence[int]) -> int:
        return await self._call(self._spool_ack, recipient, stream, tuple(seqs))

    def spool_ack_nowait(self, recipient: str, stream: bytes, seqs: Sequence[int]) -> None:
        self._submit(self._spool_ack, recipient, stream, tuple(seqs))

    def _spool_ack(self, db: sqlite3.Connection, recipient: str, stream: bytes,
                   seqs: tuple[int, ...]) -> int:
        if not seqs:
            return 0
        # recipient in the WHERE clause: a client only ever deletes what is held for it.
        marks = ",".join("?" * len(seqs))
        removed = self._unspool(db.execute(
            f"DELETE FROM spool WHERE recipient=? AND stream=? AND seq IN ({marks}) "
            "RETURNING recipient, size",
            (recipient, stream, *(_s64(seq) for seq in seqs))).fetchall(),
            self._ends(db, stream))
        if removed:
            self._drop_if_drained(db, stream)
        return removed

    async def expire_spool(self, now_ms: int) -> tuple[int, list[bytes]]:
        return await self._call(self._expire_spool, now_ms)

    def _expire_spool(self, db: sqlite3.Connection, now_ms: int) -> tuple[int, list[bytes]]:
        by_stream: dict[bytes, list[tuple[str, int]]] = {}
        for recipient, stream, size in db.execute(
                "DELETE FROM spool WHERE id IN (SELECT id FROM spool WHERE expires<=? LIMIT ?) "
                "RETURNING recipient, stream, size", (now_ms, _EXPIRE_SCAN)).fetchall():
            by_stream.setdefault(stream, []).append((recipient, size))
        dropped = sum(self._unspool(rows, self._ends(db, stream))
                      for stream, rows in by_stream.items())
        gone = [row[0] for row in db.execute(
            "SELECT stream FROM streams WHERE expires<=? LIMIT ?",
            (now_ms, _EXPIRE_SCAN)).fetchall()]
        for stream in gone:
            dropped += self._close_stream(db, stream)
        return dropped, gone

    def spool_bytes(self) -> int:
        return self._spool_total

    async def spool_bytes_of(self, recipient: str) -> int:
        return await self._call(self._spooled_of, recipient)

    async def barrier(self) -> None:
        await self._call(_barrier)

    def barrier_then(self, callback: Callable[[bool, Any], None]) -> None:
        if self._thread is None or self._loop is None:
            raise RuntimeError("store is not open")
        self._ops.put((_barrier, (), callback))


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    """Consecutive slices of ``items`` whose sizes are all in ``_CHUNKS``."""
    start, total = 0, len(items)
    for size in _CHUNKS:
        while total - start >= size:
            yield items[start:start + size]
            start += size


def _settle(results: list[tuple[Any, bool, Any]]) -> None:
    for future, ok, value in results:
        if future is None:
            continue
        if not isinstance(future, asyncio.Future):  # a callback (see enqueue_then)
            try:
                future(ok, value)
            except Exception:
                log.exception("store callback failed")
            continue
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
