"""The cork (relay/session.py): frames framed in one loop pass go out together, at the end of
the pass or, in a long pass, once the oldest has waited ``max_wait``."""

from __future__ import annotations

import asyncio
import time

from relay.session import Cork


class FramedOutput:
    """What the cork needs of a session: its ``corked`` mark and ``flush``."""

    def __init__(self) -> None:
        self.corked = False
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


async def test_frames_of_one_short_pass_are_written_once_at_its_end() -> None:
    cork = Cork(max_wait=10.0)
    a, b = FramedOutput(), FramedOutput()
    for session in (a, b, a, b, a):
        cork.add(session)  # type: ignore[arg-type]
    assert (a.flushes, b.flushes) == (0, 0)
    await asyncio.sleep(0)
    assert (a.flushes, b.flushes) == (1, 1)
    assert cork.writes == 2 and cork.early_flushes == 0


async def test_a_long_pass_flushes_once_the_oldest_frame_has_waited() -> None:
    cork = Cork(max_wait=0.01)
    a, b, c = FramedOutput(), FramedOutput(), FramedOutput()
    cork.add(a)  # type: ignore[arg-type]
    cork.add(b)  # type: ignore[arg-type]
    assert (a.flushes, b.flushes) == (0, 0)
    time.sleep(0.015)  # the loop pass goes on reading: nothing else runs meanwhile
    cork.add(b)  # type: ignore[arg-type]
    assert (a.flushes, b.flushes) == (1, 1), "the waiting frames go out inside the pass"
    assert cork.early_flushes == 1
    cork.add(c)  # a new batch: the flush already scheduled for the pass's end takes it
    assert c.flushes == 0
    await asyncio.sleep(0)
    assert (a.flushes, b.flushes, c.flushes) == (1, 1, 1)
    cork.add(a)  # the next pass schedules its own flush
    await asyncio.sleep(0)
    assert a.flushes == 2 and cork.writes == 4
