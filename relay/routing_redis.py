"""Live delivery across relays that share one Redis (issue 19 item 2).

Each relay subscribes, on its own pub/sub connection, to the wake-up channel of every handle
that has a session on it, and unsubscribes when the last one leaves. A send for a handle
with no session on this relay publishes on that handle's channel, through the store's
writer, so the message goes out only after the envelope is in Redis: the relay serving the
recipient then reads the recipient's stream and delivers it. A wake-up that is missed (the
subscription not yet confirmed, the pub/sub connection lost) is made good by reading the
stream again whenever a subscription is confirmed, which redis-py also does after it
reconnects and subscribes again.

Presence stays private: clients learn nothing about where, or whether, anyone is connected;
the channel list is visible only to whoever administers the Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from relay.routing import LocalRouter
from relay.store.redis import RedisStore

S = TypeVar("S")
log = logging.getLogger("qsecret.relay.routing")


class RedisRouter(LocalRouter[S]):
    """Local sessions as in :class:`LocalRouter`, plus wake-ups to and from other relays."""

    def __init__(self, store: RedisStore, on_wake: Callable[[S], None]) -> None:
        super().__init__()
        self.store = store
        self.on_wake = on_wake  # read ``session``'s queue again (set by the relay)
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._changes: asyncio.Queue[tuple[bool, str]] = asyncio.Queue()
        self._subscriber: asyncio.Task[None] | None = None
        self.wakes_received = 0  # for tests and metrics

    async def start(self) -> None:
        """Open the pub/sub connection (the store must be open)."""
        self._pubsub = self.store.client().pubsub()
        # A placeholder subscription: redis-py reads messages only while subscribed.
        await self._pubsub.subscribe(self.store.wake_channel("\0relay"))
        self._reader = asyncio.create_task(self._read(), name="relay-redis-wakeups")
        self._subscriber = asyncio.create_task(self._apply(), name="relay-redis-subscribe")

    async def stop(self) -> None:
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
            self._changes.put_nowait((True, handle))

    def leave(self, handle: str, session: S) -> S | None:
        newest = super().leave(handle, session)
        if not self.sessions(handle):
            self._changes.put_nowait((False, handle))
        return newest

    def wake(self, handle: str) -> None:
        self.store.publish_after_writes(handle)

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
            if not channel.startswith(prefix):
                continue
            handle = channel[len(prefix):].decode()
            # "subscribe": confirmed (again, after a reconnect) - whatever was queued before
            # is read now; "message": another relay queued something for this handle.
            self.wakes_received += message["type"] == "message"
            for session in self.sessions(handle):
                self.on_wake(session)
