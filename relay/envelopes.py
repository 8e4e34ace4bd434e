"""Envelopes: store, confirm, deliver, redeliver (prekeys: relay.prekeys).

A send is numbered and queued for the store's grouped commit, and delivered to the
recipient's live sessions at once; the sender's ``stored`` waits for the commit.
The recipient's ``ack`` deletes it. Deliveries not acked within
``redeliver_after`` are sent again (:meth:`Envelopes.redeliver`); a session that
is behind (window full) catches up from the store (:meth:`Envelopes.drain`).
Envelope bodies are never logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from typing import Any

from relay import wire
from relay.config import RelayConfig
from relay.limits import quota_refusal
from relay.memory import DRAIN_PAGE
from relay.metrics import Metrics
from relay.routing import Router
from relay.session import Session
from relay.store import EnqueueResult, EnqueueStatus, Envelope, Store, StoreUnavailable

log = logging.getLogger("qsecret.relay")

# Settled sends answered per loop pass. A commit can settle hundreds at once (the writer
# runs at low priority, so under load its batches grow); each answer costs about 25 us, so
# a slice of 32 holds the reads and deliveries waiting behind it under a millisecond.
# bench_relay.py --quick, seven interleaved pairs: p99 at half rate 5-11 ms against 7-53 ms
# with slices of 128, for a maximum rate lower by about 3 %.
CONFIRM_SLICE = 32


class _GroupTally:
    """The copies of one ``send_group`` not settled yet, and the recipients refused."""

    __slots__ = ("frame", "refused", "remaining", "session")

    def __init__(self, session: Session, frame: wire.SendGroup, remaining: int) -> None:
        self.session = session
        self.frame = frame
        self.remaining = remaining
        self.refused: list[tuple[str, str]] = []
QUOTA_REFUSED = frozenset({EnqueueStatus.QUOTA_EXCEEDED, EnqueueStatus.SHARE_EXCEEDED,
                           EnqueueStatus.STORE_FULL})


class Envelopes:
    def __init__(self, config: RelayConfig, store: Store, router: Router[Session],
                 metrics: Metrics) -> None:
        self.config = config
        self.store = store
        self.router = router
        self.metrics = metrics
        self._settled: deque[tuple[Session, wire.Send, bool, Any]] = deque()
        # How long envelopes wait at the relay (arrival to deliver frame; a recipient who
        # was offline counts its time away) and how long recipients take to ack.
        self.waited = metrics.histogram(
            "qsecret_relay_delivery_wait_seconds",
            "from an envelope's arrival to its deliver frame (queue time included)")
        self.acked = metrics.histogram(
            "qsecret_relay_ack_seconds", "from a deliver frame to the recipient's ack")

    # ------------------------------------------------------------ sends

    def can_accept_now(self, session: Session) -> bool:
        """A send may be taken without waiting (for the store or its own commits)."""
        return session.pending_sends < self.config.max_pending_sends and not self.store.behind()

    async def _room_for_a_send(self, session: Session) -> bool:
        """Wait while the sender has too many sends uncommitted or the store is behind;
        False if the connection closed meanwhile."""
        while session.pending_sends >= self.config.max_pending_sends:
            session.send_room.clear()
            await session.send_room.wait()
            if session.closing:
                return False
        if self.store.behind():
            # The disk is behind: stop reading from senders until it catches up, so
            # "stored" acks (durability) keep pace with what is accepted.
            await self.store.wait_for_room()
        return True

    async def on_send(self, session: Session, frame: wire.Send) -> None:
        if await self._room_for_a_send(session):
            self.accept_send(session, frame)

    async def on_send_group(self, session: Session, frame: wire.SendGroup) -> None:
        if await self._room_for_a_send(session):
            self.accept_send_group(session, frame)

    def accept_send_group(self, session: Session, frame: wire.SendGroup) -> None:
        """One envelope per recipient, each queued, committed and delivered like a send;
        one ``stored_group`` once all have settled."""
        assert session.handle is not None
        try:  # every copy numbered first: a store that fails half-way queues nothing
            copies = [self.store.new_envelope(session.handle, recipient,
                                              wire.fanout_msg_id(frame.msg, recipient),
                                              frame.body) for recipient in frame.to]
        except StoreUnavailable as exc:
            self._store_down(session, exc, frame.msg, frame.id)
            return
        session.pending_sends += 1
        tally = _GroupTally(session, frame, len(frame.to))
        for recipient, envelope in zip(frame.to, copies, strict=True):
            self.store.enqueue_then(envelope, functools.partial(self._on_group_copy, tally,
                                                                recipient))
            peers = self.router.sessions(recipient)
            if peers:
                for peer in peers:
                    self._push(peer, envelope)
            else:
                self.router.wake(recipient)

    def _store_down(self, session: Session, exc: StoreUnavailable, msg: str,
                    req_id: str | None) -> None:
        """The store cannot number envelopes now (its server is down): refuse the send so
        the sender keeps it and sends it again; nothing was queued or delivered."""
        log.warning("send refused, store unavailable: %s", exc)
        self.metrics.count("qsecret_relay_envelopes_total", "result", "store_unavailable")
        session.refuse("internal", "the relay's store is unavailable; send it again later",
                       strike=False, req_id=req_id, msg=msg)

    def _on_group_copy(self, tally: _GroupTally, recipient: str, ok: bool, value: Any) -> None:
        """One copy of a group envelope settled (on the event loop, after its commit)."""
        if not ok:
            if not isinstance(value, asyncio.CancelledError):
                log.error("enqueue failed: %s", type(value).__name__)
            tally.refused.append((recipient, "internal"))
        else:
            status = value.status
            if status in (EnqueueStatus.STORED, EnqueueStatus.DUPLICATE):
                self.metrics.count("qsecret_relay_envelopes_total", "result", status.value)
            else:
                code = status.value if status in QUOTA_REFUSED else "unknown_recipient"
                tally.refused.append((recipient, code))
        tally.remaining -= 1
        if tally.remaining:
            return
        session = tally.session
        session.pending_sends -= 1
        session.send_room.set()
        frame = tally.frame
        session.post(wire.StoredGroup(frame.msg, tuple(tally.refused), frame.id).encode())

    def accept_send(self, session: Session, frame: wire.Send) -> None:
        """Number the envelope, queue it for the commit, deliver it to live recipients."""
        assert session.handle is not None
        try:
            envelope = self.store.new_envelope(session.handle, frame.to, frame.msg, frame.body)
        except StoreUnavailable as exc:
            self._store_down(session, exc, frame.msg, frame.id)
            return
        session.pending_sends += 1
        self.store.enqueue_then(envelope, functools.partial(self._on_stored, session, frame))
        # Live recipients get it now, while it is being committed: their ack deletes it
        # after the insert (same queue, in order). The sender's "stored" still waits for
        # the commit; if the relay dies first, the sender resends the same message ID and
        # the recipient's application drops the repeat.
        peers = self.router.sessions(frame.to)
        if peers:
            for peer in peers:
                self._push(peer, envelope)
        else:
            self.router.wake(frame.to)

    def _on_stored(self, session: Session, frame: wire.Send, ok: bool, value: Any) -> None:
        """A commit's outcome for one send: handled in slices (see ``_confirm_some``)."""
        if not self._settled:
            asyncio.get_running_loop().call_soon(self._confirm_some)
        self._settled.append((session, frame, ok, value))

    def _confirm_some(self) -> None:
        """Answer at most CONFIRM_SLICE settled sends, then let the loop read and deliver.

        A slow disk makes big commits: a thousand sends settle at once. Answering them all
        in one loop pass would hold every delivery that arrives meanwhile behind them.
        """
        settled = self._settled
        for _ in range(min(CONFIRM_SLICE, len(settled))):
            self._confirm(*settled.popleft())
        if settled:
            asyncio.get_running_loop().call_soon(self._confirm_some)

    def _confirm(self, session: Session, frame: wire.Send, ok: bool, value: Any) -> None:
        session.pending_sends -= 1
        session.send_room.set()
        if not ok:
            if isinstance(value, asyncio.CancelledError):
                return
            log.error("enqueue failed: %s", type(value).__name__)
            session.refuse("internal", "envelope not stored; send it again",
                           strike=False, req_id=frame.id, msg=frame.msg)
            return
        result: EnqueueResult = value
        status = result.status
        if status is EnqueueStatus.STORED:
            self.metrics.count("qsecret_relay_envelopes_total", "result", "stored")
            if frame.id is not None:
                session.post(wire.Stored(frame.msg, False, frame.id).encode())
            else:
                # The results of one commit settle in one loop pass: confirm them together.
                if not session.stored_batch:
                    asyncio.get_running_loop().call_soon(self._confirm_stored, session)
                session.stored_batch.append(frame.msg)
        elif status is EnqueueStatus.DUPLICATE:
            self.metrics.count("qsecret_relay_envelopes_total", "result", "duplicate")
            session.post(wire.Stored(frame.msg, True, frame.id).encode())
        elif status in QUOTA_REFUSED:
            limits = self.store.limits
            code = status.value
            messages, size = {
                "share_exceeded": (limits.share_messages, limits.share_bytes),
                "store_full": (None, limits.max_store_bytes),
            }.get(code, (limits.quota_messages, limits.quota_bytes))
            session.refuse(code, quota_refusal(code, frame.to, place="queue",
                                               messages=messages, size=size),
                           strike=False, req_id=frame.id, msg=frame.msg)
        else:
            session.refuse("unknown_recipient", f"no user {frame.to!r} on this relay",
                           strike=False, req_id=frame.id, msg=frame.msg)

    @staticmethod
    def _confirm_stored(session: Session) -> None:
        """One ``stored`` (or ``stored_many``) frame for everything committed together."""
        msgs, session.stored_batch = session.stored_batch, []
        if len(msgs) == 1:
            session.post(wire.Stored(msgs[0], False).encode())
            return
        for start in range(0, len(msgs), wire.MAX_STORED_MSGS):
            session.post(wire.StoredMany(tuple(msgs[start:start + wire.MAX_STORED_MSGS])).encode())

    # ------------------------------------------------------------ deliveries

    def push(self, session: Session, envelope: Envelope) -> None:
        """Deliver an envelope another relay stored (relays sharing a store) like one sent
        here: now, or through the queue when the connection is behind."""
        self._push(session, envelope)

    def _push(self, session: Session, envelope: Envelope) -> None:
        """Deliver a fresh envelope now, unless the connection is behind (then it drains)."""
        if (session.draining or session.need_drain
                or len(session.inflight) >= self.config.window
                or session.inflight_bytes >= self.config.window_bytes):
            session.need_drain = True
            session.wake.set()
            return
        self._deliver(session, envelope)

    def _deliver(self, session: Session, envelope: Envelope) -> None:
        text = wire.Deliver(envelope.seq, envelope.msg, envelope.sender, envelope.body,
                            envelope.ts).encode()
        size = len(text)
        session.inflight[envelope.seq] = (time.monotonic(), size)
        session.inflight_bytes += size
        session.post(text)
        self.metrics.count("qsecret_relay_deliveries_total")
        self.waited.observe(max(0.0, time.time() - envelope.ts / 1000))

    def _window_full(self, session: Session) -> bool:
        return (len(session.inflight) >= self.config.window
                or session.inflight_bytes >= self.config.window_bytes)

    async def drain(self, session: Session) -> None:
        """Send queued envelopes not already in flight, oldest first, up to the window.

        The store read covers what is in flight plus ``DRAIN_PAGE`` more, not a whole
        window: the bodies read are held only until this pass has posted them, and this
        keeps them to about ``window_bytes`` plus a page of the largest envelopes.
        """
        assert session.handle is not None
        session.draining = True
        try:
            while session.need_drain and not self._window_full(session):
                session.need_drain = False
                limit = min(self.config.window, len(session.inflight) + DRAIN_PAGE)
                rows = await self.store.pending(session.handle, limit)
                fresh = [row for row in rows if row.seq not in session.inflight]
                for row in fresh:
                    if self._window_full(session):
                        session.need_drain = True
                        break
                    self._deliver(session, row)
                if len(rows) == limit and fresh:
                    session.need_drain = True
                del rows, fresh  # not held across the next read
        finally:
            session.draining = False

    def redeliver(self, session: Session, now: float) -> None:
        """Mark for sending again what was delivered over ``redeliver_after`` seconds ago
        and not acked; the session's writer task re-reads and sends them (resend_due).

        Nothing is marked while the connection has not taken what was already sent (frames
        queued, or the transport's buffer over its high-water mark): a client that does not
        read gets no second copies piling up in the relay's memory.
        """
        if (not session.inflight or session.redeliver_due or session.outbox
                or session.ws.paused):
            return
        stale = now - self.config.redeliver_after
        inflight = session.inflight
        due = [seq for seq, (sent, _) in inflight.items() if sent < stale]
        if not due:
            return
        for seq in due:
            inflight[seq] = (now, inflight[seq][1])
        session.redeliver_due = due
        session.wake.set()

    async def resend_due(self, session: Session) -> None:
        """Send the deliveries marked by :meth:`redeliver` again, re-read from the store
        in one batch: the same frame as the first time (the stored envelope's bytes)."""
        handle = session.handle
        assert handle is not None
        due, session.redeliver_due = session.redeliver_due, []
        rows = await self.store.envelopes(handle, due)
        if session.closing:
            return
        found = {row.seq: row for row in rows}
        del rows
        inflight = session.inflight
        now = time.monotonic()
        for seq in due:
            entry = inflight.get(seq)
            if entry is None:  # acked while the store was read
                continue
            row = found.pop(seq, None)
            if row is None:  # no longer queued (acked on another connection, or expired)
                del inflight[seq]
                session.inflight_bytes -= entry[1]
                continue
            text = wire.Deliver(row.seq, row.msg, row.sender, row.body, row.ts).encode()
            size = len(text)
            inflight[seq] = (now, size)
            session.inflight_bytes += size - entry[1]
            session.post(text)
            self.metrics.count("qsecret_relay_redeliveries_total")

    def on_ack(self, session: Session, frame: wire.Ack) -> None:
        handle = session.handle
        assert handle is not None
        self.store.ack_nowait(handle, frame.seqs)
        self.metrics.count("qsecret_relay_acks_total", amount=len(frame.seqs))
        now = time.monotonic()
        observe = self.acked.observe
        for peer in self.router.sessions(handle):
            inflight = peer.inflight
            for seq in frame.seqs:
                entry = inflight.pop(seq, None)
                if entry is not None:
                    peer.inflight_bytes -= entry[1]
                    observe(now - entry[0])
            if peer.need_drain:
                peer.wake.set()


__all__ = ["Envelopes"]
