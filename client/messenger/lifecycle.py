"""Who may still run inside a messenger, so that ``stop`` can end everything in order.

Two kinds of work touch the store: the messenger's own tasks (relay link, key status,
login work, transfers) and operations a UI started (send, add a contact, accept a file).
``stop`` first refuses new operations, then cancels and awaits the tasks, then lets the
operations already under way finish (a message being sealed is committed to the outbox,
never half done), and only then may the store close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from .api import Event, MessengerError

log = logging.getLogger(__name__)

STOPPED = "the messenger has stopped"


class Lifecycle:
    """Running, stopping or stopped; the tasks it owns; the operations under way."""

    def __init__(self) -> None:
        self.stopping = False
        self.stopped = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._operations: dict[asyncio.Task[Any], int] = {}
        self._idle: asyncio.Event | None = None

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any] | None:
        """Run ``coro`` as a task this messenger owns (cancelled and awaited by ``stop``);
        once stopping, nothing new starts and None is returned."""
        if self.stopping:
            coro.close()
            return None
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("messenger task %s failed", task.get_name(), exc_info=task.exception())

    def check(self) -> None:
        """Raise MessengerError once stopping began (nothing may touch the store after)."""
        if self.stopping:
            raise MessengerError(STOPPED)

    @contextlib.asynccontextmanager
    async def operation(self) -> AsyncIterator[None]:
        """An operation a UI started: refused once stopping; ``stop`` waits for it."""
        self.check()
        task = asyncio.current_task()
        assert task is not None
        self._operations[task] = self._operations.get(task, 0) + 1
        try:
            yield
        finally:
            depth = self._operations.pop(task) - 1
            if depth:
                self._operations[task] = depth
            if self._idle is not None:
                self._idle.set()  # the waiter in finish_operations looks again

    async def cancel_tasks(self) -> None:
        """Cancel every owned task and wait until each has ended (tasks that spawn more while
        ending are caught by the loop)."""
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)

    async def finish_operations(self, grace_s: float) -> None:
        """Wait for the operations under way (each is bounded by the KME and relay time-outs);
        cancel what is left after ``grace_s``. The caller's own task is never waited for."""
        me = asyncio.current_task()
        others = [t for t in self._operations if t is not me]
        if not others:
            return
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._until_idle(me), grace_s)
        except TimeoutError:
            late = [t for t in self._operations if t is not me]
            log.warning("cancelling %d operation(s) still running at stop", len(late))
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _until_idle(self, me: asyncio.Task[Any] | None) -> None:
        assert self._idle is not None
        while any(t is not me for t in self._operations):
            self._idle.clear()
            await self._idle.wait()


class EventBus:
    """Delivers events to the UIs' callbacks until muted (before the store closes)."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event], None]] = []
        self.muted = False

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        self._subscribers.append(callback)

    def emit(self, event: Event) -> None:
        if self.muted:
            return
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:  # a broken UI callback must not stop the messenger
                log.exception("event subscriber failed")
