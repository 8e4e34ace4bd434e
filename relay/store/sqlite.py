"""SQLite store: WAL, one writer thread, grouped commits.

All operations go through one queue to one thread holding one connection. The
thread takes everything queued since its last commit and runs it in a single
transaction (one SAVEPOINT per operation, so one failing operation does not undo
the others), commits, then resolves the callers' futures. Under load, hundreds
of concurrent sends share one commit; idle, a send commits alone at once.
With ``synchronous=FULL`` (default) a commit survives power loss; ``NORMAL``
survives a killed process (the case the relay tests) and is faster.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from relay.wire import OneTimePrekey, PrekeyBundle

from .base import (
    BindStatus,
    BundleRefused,
    EnqueueResult,
    EnqueueStatus,
    Envelope,
    FetchedBundle,
    Store,
    StoreLimits,
)

log = logging.getLogger("qsecret.relay.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS handles(
    handle TEXT PRIMARY KEY, identity BLOB NOT NULL, created INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue(
    seq INTEGER PRIMARY KEY AUTOINCREMENT, recipient TEXT NOT NULL, sender TEXT NOT NULL,
    msg TEXT NOT NULL, body BLOB NOT NULL, ts INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS queue_by_recipient ON queue(recipient, seq);
CREATE TABLE IF NOT EXISTS seen(
    id INTEGER PRIMARY KEY, sender TEXT NOT NULL, msg TEXT NOT NULL, ts INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS seen_once ON seen(sender, msg);
CREATE TABLE IF NOT EXISTS bundles(
    handle TEXT PRIMARY KEY, identity BLOB NOT NULL, signed BLOB NOT NULL,
    signed_sig BLOB NOT NULL, updated INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS one_time(
    handle TEXT NOT NULL, key_id INTEGER NOT NULL, key BLOB NOT NULL, sig BLOB NOT NULL,
    PRIMARY KEY(handle, key_id)) WITHOUT ROWID;
"""

_Op = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any] | None]
_STOP = object()
_EXPIRE_SCAN = 5000  # rows looked at per expiry round (rows are in time order)


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
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self.path = Path(path)
        self.limits = limits or StoreLimits()
        self.synchronous = synchronous
        self.max_batch = max_batch
        self.max_backlog = max_backlog
        self._ops: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Owned by the writer thread only (except the int, read for /metrics).
        self._handles: dict[str, bytes] = {}
        self._depth: dict[str, list[int]] = {}  # recipient -> [count, bytes]
        self._total_depth = 0
        self._last_ts = 0
        self._last_seq = 0
        self.commits = 0  # batches committed (for tests and metrics)

    # ------------------------------------------------------------ plumbing

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
        """Backpressure: wait while the writer is more than ``max_backlog`` operations behind."""
        for _ in range(10_000):  # at most ~10 s, then let the caller through anyway
            if self._ops.qsize() <= self.max_backlog:
                return
            await asyncio.sleep(0.001)

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
        self._loop.call_soon_threadsafe(_settle, [(ready, True, None)])
        stop = False
        while not stop:
            batch: list[_Op] = []
            item = self._ops.get()
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
                self._run_batch(db, batch)
        db.close()

    def _run_batch(self, db: sqlite3.Connection, batch: list[_Op]) -> None:
        results: list[tuple[asyncio.Future[Any] | None, bool, Any]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for fn, args, future in batch:
                db.execute("SAVEPOINT op")
                try:
                    value = fn(db, *args)
                except Exception as exc:
                    db.execute("ROLLBACK TO op")
                    results.append((future, False, exc))
                else:
                    results.append((future, True, value))
                db.execute("RELEASE op")
            db.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            # The whole batch is lost: nobody is told "stored" for any of it.
            log.error("sqlite commit failed (%s): %d operations refused", exc, len(batch))
            try:
                db.rollback()
            except sqlite3.Error:
                log.exception("sqlite rollback failed")
            self._depth.clear()
            self._total_depth = self._count_all(db)
            results = [(future, False, exc) for _, _, future in batch]
        waited = [r for r in results if r[0] is not None]
        if waited:
            try:
                self._loop.call_soon_threadsafe(_settle, waited)  # type: ignore[union-attr]
            except RuntimeError:  # loop closed during shutdown: nobody is waiting any more
                pass

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        self._handles = dict(db.execute("SELECT handle, identity FROM handles"))
        self._total_depth = self._count_all(db)
        row = db.execute("SELECT max(ts) FROM queue").fetchone()
        self._last_ts = row[0] or 0
        # Never reuse a number, even of a deleted envelope (AUTOINCREMENT keeps the high mark).
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='queue'").fetchone()
        self._last_seq = row[0] if row else 0
        return db

    @staticmethod
    def _count_all(db: sqlite3.Connection) -> int:
        return db.execute("SELECT count(*) FROM queue").fetchone()[0]

    def _now_ms(self) -> int:
        return int(time.time() * 1000)

    def _depth_of(self, db: sqlite3.Connection, recipient: str) -> list[int]:
        depth = self._depth.get(recipient)
        if depth is None:
            count, size = db.execute(
                "SELECT count(*), coalesce(sum(length(body)), 0) FROM queue WHERE recipient=?",
                (recipient,),
            ).fetchone()
            depth = self._depth[recipient] = [count, size]
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
        return await self._call(self._enqueue, envelope)

    def enqueue_future(self, envelope: Envelope) -> asyncio.Future[EnqueueResult]:
        """Like :meth:`enqueue` but returns the future at once (the relay's hot path)."""
        return self._call(self._enqueue, envelope)

    def _enqueue(self, db: sqlite3.Connection, envelope: Envelope) -> EnqueueResult:
        sender, recipient, msg, body = (envelope.sender, envelope.recipient, envelope.msg,
                                        envelope.body)
        if recipient not in self._handles:
            return EnqueueResult(EnqueueStatus.UNKNOWN_RECIPIENT)
        depth = self._depth_of(db, recipient)
        if (
            depth[0] + 1 > self.limits.quota_messages
            or depth[1] + len(body) > self.limits.quota_bytes
        ):
            if db.execute("SELECT 1 FROM seen WHERE sender=? AND msg=?", (sender, msg)).fetchone():
                return EnqueueResult(EnqueueStatus.DUPLICATE)
            return EnqueueResult(EnqueueStatus.QUOTA_EXCEEDED)
        cursor = db.execute(
            "INSERT OR IGNORE INTO seen(sender, msg, ts) VALUES (?, ?, ?)",
            (sender, msg, envelope.ts),
        )
        if cursor.rowcount == 0:
            return EnqueueResult(EnqueueStatus.DUPLICATE)
        db.execute(
            "INSERT INTO queue(seq, recipient, sender, msg, body, ts) VALUES (?, ?, ?, ?, ?, ?)",
            (envelope.seq, recipient, sender, msg, body, envelope.ts),
        )
        depth[0] += 1
        depth[1] += len(body)
        self._total_depth += 1
        return EnqueueResult(EnqueueStatus.STORED, envelope)

    async def pending(self, recipient: str, limit: int) -> list[Envelope]:
        return await self._call(self._pending, recipient, limit)

    def _pending(self, db: sqlite3.Connection, recipient: str, limit: int) -> list[Envelope]:
        rows = db.execute(
            "SELECT seq, sender, msg, body, ts FROM queue WHERE recipient=? ORDER BY seq LIMIT ?",
            (recipient, limit),
        ).fetchall()
        return [Envelope(seq, recipient, sender, msg, body, ts)
                for seq, sender, msg, body, ts in rows]

    async def ack(self, recipient: str, seqs: Sequence[int]) -> int:
        return await self._call(self._ack, recipient, tuple(seqs))

    def ack_nowait(self, recipient: str, seqs: Sequence[int]) -> None:
        """Queue the deletion without waiting (runs after every earlier operation)."""
        self._submit(self._ack, recipient, tuple(seqs))

    def _ack(self, db: sqlite3.Connection, recipient: str, seqs: tuple[int, ...]) -> int:
        removed = 0
        freed = 0
        # recipient in the WHERE clause: a client can only ever delete from its own queue.
        for seq in seqs:
            row = db.execute(
                "DELETE FROM queue WHERE seq=? AND recipient=? RETURNING length(body)",
                (seq, recipient),
            ).fetchone()
            if row is not None:
                removed += 1
                freed += row[0]
        if removed:
            depth = self._depth_of(db, recipient)
            depth[0] -= removed
            depth[1] -= freed
            self._total_depth -= removed
        return removed

    async def queue_depth(self, recipient: str) -> int:
        return await self._call(lambda db: self._depth_of(db, recipient)[0])

    def total_queue_depth(self) -> int:
        return self._total_depth

    async def expire(self) -> int:
        return await self._call(self._expire)

    def _expire(self, db: sqlite3.Connection) -> int:
        cutoff = int((time.time() - self.limits.ttl_seconds) * 1000)
        # Rows are in time order, so the expired ones are a prefix of the table.
        last = db.execute(
            "SELECT max(seq) FROM (SELECT seq, ts FROM queue ORDER BY seq LIMIT ?) WHERE ts < ?",
            (_EXPIRE_SCAN, cutoff),
        ).fetchone()[0]
        dropped = 0
        if last is not None:
            for recipient, count, size in db.execute(
                "SELECT recipient, count(*), sum(length(body)) FROM queue WHERE seq<=? "
                "GROUP BY recipient",
                (last,),
            ).fetchall():
                depth = self._depth.get(recipient)
                if depth is not None:
                    depth[0] -= count
                    depth[1] -= size
                dropped += count
            db.execute("DELETE FROM queue WHERE seq<=?", (last,))
            self._total_depth -= dropped
        last_seen = db.execute(
            "SELECT max(id) FROM (SELECT id, ts FROM seen ORDER BY id LIMIT ?) WHERE ts < ?",
            (_EXPIRE_SCAN, cutoff),
        ).fetchone()[0]
        if last_seen is not None:
            db.execute("DELETE FROM seen WHERE id<=?", (last_seen,))
        return dropped

    # ------------------------------------------------------------ prekeys

    async def put_bundle(self, handle: str, bundle: PrekeyBundle) -> int:
        return await self._call(self._put_bundle, handle, bundle)

    def _put_bundle(self, db: sqlite3.Connection, handle: str, bundle: PrekeyBundle) -> int:
        have = db.execute("SELECT count(*) FROM one_time WHERE handle=?", (handle,)).fetchone()[0]
        new_ids = {k.key_id for k in bundle.one_time}
        replaced = 0
        if new_ids:
            marks = ",".join("?" * len(new_ids))
            replaced = db.execute(
                f"SELECT count(*) FROM one_time WHERE handle=? AND key_id IN ({marks})",
                (handle, *new_ids),
            ).fetchone()[0]
        total = have - replaced + len(new_ids)
        if total > self.limits.max_one_time_stored:
            raise BundleRefused(
                f"{total} one-time prekeys would be stored; the limit is "
                f"{self.limits.max_one_time_stored}"
            )
        db.execute(
            "INSERT OR REPLACE INTO bundles VALUES (?, ?, ?, ?, ?)",
            (handle, bundle.identity, bundle.signed, bundle.signed_sig, self._now_ms()),
        )
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


def _settle(results: list[tuple[asyncio.Future[Any] | None, bool, Any]]) -> None:
    for future, ok, value in results:
        if future is None or future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
