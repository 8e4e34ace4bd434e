"""Live delivery across relays that share one Redis (issue 19 item 2).

Each relay records in Redis which handles have a session on it (``qs_presence``, queued in
order with its other writes) and subscribes, on its own pub/sub connection, to the wake-up
channel of each of them. A write that queues something for a handle (an envelope, a spooled
file frame) publishes on that handle's channel in the same atomic step when another relay
has a session of it (relay/store/redis_lua.py, "Wake-ups"), so the message goes out only
once the write is in Redis, also when the handle is live on the writer's relay too (two
devices, or a client that failed over while its old connection lingers). The relay serving
the recipient then delivers the envelope the message carries ('e': to its live sessions at
once, as the writer's relay does for its own) or reads the file spool ('s'). A
wake-up that is missed (the subscription not yet confirmed, the pub/sub connection lost) is
made good by reading both again whenever a subscription is confirmed, which redis-py also
does after it reconnects and subscribes again.

Live media streams (calls) between relays: each relay also subscribes to its own media
channel (``P.media:<relay>``) and :class:`MediaLink` publishes there, in order, a stream's
open, its answer, its frames and its close for the relay holding the other end (found in
the presence set ``P.on:<handle>``). Media frames are never stored: PUBLISH only, and a frame
that finds the link's queue full (Redis or the link lagging) is dropped and counted, as live
media is; the relay.streams module holds the stream logic.

Presence stays private: clients learn nothing about where, or whether, anyone is connected;
the channel list and the presence sets are visible only to whoever administers the Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from relay.routing import LocalRouter
from relay.store.base import Envelope
from relay.store.redis import RedisStore

S = TypeVar("S")
log = logging.getLogger("qsecret.relay.routing")


class RedisRouter(LocalRouter[S]):
    """Local sessions as in :class:`LocalRouter`, plus wake-ups to and from other relays."""

    def __init__(self, store: RedisStore,
                 on_wake: Callable[[S, str, Envelope | None], None]) -> None:
        super().__init__()
        self.store = store
        # on_wake(session, kind, envelope), set by the relay: 'e' with an envelope: deliver
        # it live; 'e' without: read the queue of ``session``'s handle again; 's': its
        # file spool.
        self.on_wake = on_wake
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._changes: asyncio.Queue[tuple[bool, str]] = asyncio.Queue()
        self._subscriber: asyncio.Task[None] | None = None
        self.wakes_received = 0  # for tests and metrics
        self.media_link = MediaLink(store)

    async def start(self) -> None:
        """Open the pub/sub connection (the store must be open)."""
        self.store.reset_presence()  # what this relay had before a crash is gone
        self._pubsub = self.store.client().pubsub()
        # A placeholder subscription: redis-py reads messages only while subscribed.
        await self._pubsub.subscribe(self.store.wake_channel("\0relay"))
        await self._pubsub.subscribe(self.media_link.channel)
        self.media_link.start()
        self._reader = asyncio.create_task(self._read(), name="relay-redis-wakeups")
        self._subscriber = asyncio.create_task(self._apply(), name="relay-redis-subscribe")

    async def stop(self) -> None:
        await self.media_link.stop()
        if self._pubsub is not None:
            self.store.reset_presence()  # queued before the store's closing barrier
        for task in (self._reader, self._subscriber):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None

    def join(self, handle: str, session: S) -> None:
        first = not self.sessions(handle)
        super().join(handle, session)
        if first:
            # Before the login's first queue read (same writer, in order): every write
            # after this one wakes this relay, every write before it is seen by the read.
            self.store.set_presence(handle, True)
            self._changes.put_nowait((True, handle))

    def leave(self, handle: str, session: S) -> S | None:
        was_here = bool(self.sessions(handle))
        newest = super().leave(handle, session)
        if was_here and not self.sessions(handle):
            self.store.set_presence(handle, False)
            self._changes.put_nowait((False, handle))
        return newest

    def wake(self, handle: str) -> None:
        """Nothing to do: the write itself wakes the relays that have ``handle``."""

    async def _apply(self) -> None:
        """(Un)subscribe in the order sessions came and went (one task: no reordering)."""
        while True:
            subscribe, handle = await self._changes.get()
            channel = self.store.wake_channel(handle)
            try:
                if subscribe and self.sessions(handle):
                    await self._pubsub.subscribe(channel)
                elif not subscribe and not self.sessions(handle):
                    await self._pubsub.unsubscribe(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis unreachable: the next login subscribes again
                log.error("redis pub/sub (un)subscribe %s failed: %s", handle, exc)

    async def _read(self) -> None:
        prefix = self.store.wake_channel("").encode()
        me = self.store.consumer.encode()
        media = self.media_link.channel.encode()
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: redis-py reconnects and resubscribes
                log.error("redis pub/sub read failed: %s", exc)
                await asyncio.sleep(0.5)  # back off before reconnecting, not a sync point
                continue
            if message is None or message["type"] not in ("message", "subscribe"):
                continue
            channel = bytes(message["channel"])
            if channel == media:
                if message["type"] == "message":
                    self.media_link.received(bytes(message["data"]))
                continue
            if not channel.startswith(prefix):
                continue
            handle = channel[len(prefix):].decode()
            if message["type"] == "subscribe":
                # Confirmed (again, after a reconnect): whatever was queued before is read
                # now, and the presence is recorded again (a restarted Redis may lack it).
                if self.sessions(handle):
                    self.store.set_presence(handle, True)
                for session in list(self.sessions(handle)):
                    self.on_wake(session, "e", None)
                    self.on_wake(session, "s", None)
                continue
            # Another relay queued something for this handle.
            data = bytes(message["data"])
            writer, _, envelope = data[1:].partition(b"\0")
            if writer == me:  # our own write: delivered here directly
                continue
            self.wakes_received += 1
            kind = "s" if data[:1] == b"s" else "e"
            live = _envelope(handle, envelope) if envelope else None
            for session in list(self.sessions(handle)):
                self.on_wake(session, kind, live)


MEDIA_QUEUE = 256  # media frames waiting to be published, past which new ones are dropped


class MediaLink:
    """Live media messages to other relays, published in order, never stored.

    Control messages (open, answer, close: a few per call) always go out; media frames
    are dropped (and counted) once ``MEDIA_QUEUE`` wait, so a lagging Redis costs bounded
    memory and late frames, as a stuck receiver does on one relay."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.me = store.consumer
        self.channel = self.channel_of(self.me)
        self.on_message: Callable[[bytes], None] = lambda message: None  # set by relay.streams
        # on_gone(relay): a message to ``relay`` reached no subscriber (it died, or lost
        # Redis): its streams are over. Set by relay.streams.
        self.on_gone: Callable[[str], None] = lambda relay: None
        self._queue: deque[tuple[str, bytes]] = deque()
        self._frames = 0  # media frames in _queue
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0  # media frames dropped here (the queue was full)
        self.published = 0

    def channel_of(self, relay: str) -> str:
        return f"{self.store.prefix}media:{relay}"

    def start(self) -> None:
        self._task = asyncio.create_task(self._publish(), name="relay-redis-media")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def relays_of(self, handle: str) -> list[str]:
        """The other relays recorded as holding a session of ``handle``."""
        members = await self.store.client().smembers(f"{self.store.prefix}on:{handle}")
        return sorted(name for name in (_text(m) for m in members) if name != self.me)

    def send(self, relay: str, message: bytes) -> bool:
        """Queue ``message`` for ``relay``; False (dropped) for a media frame past the bound."""
        if message[:1] in MEDIA_FRAME_KINDS:
            if self._frames >= MEDIA_QUEUE:
                self.dropped += 1
                return False
            self._frames += 1
        self._queue.append((self.channel_of(relay), message))
        self._ready.set()
        return True

    def received(self, message: bytes) -> None:
        try:
            self.on_message(message)
        except Exception:  # one bad message must not stop the relay's pub/sub reader
            log.exception("a media message from another relay failed")

    async def _publish(self) -> None:
        """One task, one pipeline at a time: messages leave in the order they were queued."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), 64))]
                self._frames -= sum(1 for _, m in batch if m[:1] in MEDIA_FRAME_KINDS)
                pipe = self.store.client().pipeline(transaction=False)
                for channel, message in batch:
                    pipe.publish(channel, message)
                try:
                    heard = await pipe.execute()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # live media: what Redis did not take is gone
                    log.error("redis media publish failed: %s", exc)
                    continue
                self.published += len(batch)
                gone = {channel for (channel, _), count in zip(batch, heard, strict=True)
                        if not count}
                for channel in gone:
                    self.on_gone(channel[len(self.channel_of("")):])


MEDIA_FRAME_KINDS = (b"f", b"F")  # relay.streams: a media frame, the final one


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _envelope(recipient: str, packed: bytes) -> Envelope | None:
    """The envelope a wake-up carries (redis_lua.py, "Wake-ups"); None if it does not parse
    (the queue is read instead)."""
    try:
        seq, ts, sender, msg, body = packed.split(b"\0", 4)
        return Envelope(int(seq), recipient, sender.decode(), msg.decode(), body, int(ts))
    except ValueError:
        log.error("a wake-up for %s carried a malformed envelope", recipient)
        return None
