"""The thin asyncio layer: run a sender or receiver core over any frame transport.

The transport is two things the caller provides: ``send(frame)`` (e.g. wrap the bytes in a
relay binary frame of the transfer's stream and put it on the websocket) and an
``asyncio.Queue`` that the connection's reader fills with the transfer frames addressed to
this transfer (``None`` when the connection drops). Disk reads, sealing, hashing and writes
run in a worker thread (``asyncio.to_thread``), one call at a time, so the event loop -- and
the websocket keepalive -- never waits on them.

Lost frames are recovered by the cores' own protocol: the receiver asks to resume on a gap or
after ``idle_seconds`` without input; the sender goes back to the last acknowledged chunk after
``retransmit_seconds`` without an ack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .errors import SourceError
from .events import Event
from .receiver import ReceiverStatus, TransferReceiver
from .sender import SenderStatus, TransferSender

SendFrame = Callable[[bytes], Awaitable[None]]
FrameQueue = asyncio.Queue[bytes | None]
DEFAULT_RETRANSMIT_SECONDS = 10.0
DEFAULT_IDLE_SECONDS = 10.0
DEFAULT_GIVE_UP_SECONDS = 120.0
DEFAULT_LINGER_SECONDS = 30.0
_SENDER_DONE = {SenderStatus.COMPLETE, SenderStatus.CANCELLED, SenderStatus.DECLINED,
                SenderStatus.FAILED}


def _ignore(_event: Event) -> None:
    return None


async def run_sender(
    sender: TransferSender,
    send: SendFrame,
    incoming: FrameQueue,
    *,
    on_event: Callable[[Event], None] = _ignore,
    retransmit_seconds: float = DEFAULT_RETRANSMIT_SECONDS,
    give_up_seconds: float = DEFAULT_GIVE_UP_SECONDS,
) -> SenderStatus:
    """Send until the transfer ends, the connection drops (``None`` on the queue), or the
    receiver is silent for ``give_up_seconds``.

    Returns the sender's status; SENDING or OFFERED means "not finished: call again on the
    next connection". A source file that changed raises SourceError after the cancel is sent.
    """
    loop = asyncio.get_running_loop()
    last_heard = loop.time()
    while True:
        while True:
            try:
                frame = await asyncio.to_thread(sender.next_frame)
            except SourceError:
                for control in sender.data_to_send():
                    await send(control)
                raise
            if frame is None:
                break
            await send(bytes(frame))
        for control in sender.data_to_send():
            await send(control)
        if sender.status in _SENDER_DONE:
            return sender.status
        try:
            data = await asyncio.wait_for(incoming.get(), timeout=retransmit_seconds)
        except TimeoutError:
            if loop.time() - last_heard >= give_up_seconds:
                return sender.status
            for event in sender.retransmit():
                on_event(event)
            continue
        if data is None:
            return sender.status
        last_heard = loop.time()
        for event in sender.receive_control(data):
            on_event(event)


async def run_receiver(
    receiver: TransferReceiver,
    send: SendFrame,
    incoming: FrameQueue,
    *,
    on_event: Callable[[Event], None] = _ignore,
    idle_seconds: float = DEFAULT_IDLE_SECONDS,
    linger_seconds: float = DEFAULT_LINGER_SECONDS,
) -> ReceiverStatus:
    """Receive until the transfer ends or the connection drops (``None`` on the queue).

    After completion it lingers until the link has been quiet for ``linger_seconds``,
    answering retransmitted chunks with the final ack (which may have been lost).
    """
    while receiver.status is ReceiverStatus.RECEIVING:
        for control in receiver.data_to_send():
            await send(control)
        try:
            data = await asyncio.wait_for(incoming.get(), timeout=idle_seconds)
        except TimeoutError:
            receiver.request_resume()  # nudge a sender that lost our acks or its chunks
            continue
        if data is None:
            return receiver.status
        for event in await asyncio.to_thread(receiver.receive_frame, data):
            on_event(event)
    for control in receiver.data_to_send():
        await send(control)
    while receiver.status is ReceiverStatus.COMPLETE:
        try:
            data = await asyncio.wait_for(incoming.get(), timeout=linger_seconds)
        except TimeoutError:
            break
        if data is None:
            break
        for event in await asyncio.to_thread(receiver.receive_frame, data):
            on_event(event)
        for control in receiver.data_to_send():
            await send(control)
    return receiver.status
