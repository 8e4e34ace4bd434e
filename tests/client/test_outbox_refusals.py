"""A relay refusal of a message nobody waits for (the TUI's sends) still reaches the user with
the relay's reason: whose quota is full, not just a failed mark (issue 14 item 3)."""

from __future__ import annotations

import asyncio

import pytest

from client.messenger.api import (
    ConversationId,
    Delivery,
    DeliveryEvent,
    ErrorEvent,
    Event,
    MessengerError,
)
from client.messenger.outbox import FAILED_CODES, Outbox
from relay.wire import Error
from relay.wire.errors import QUOTA_CODES

SHARE_FULL = ("your share of bob's queue is full (2500 messages / 16 MiB from one sender); "
              "it frees as bob receives what you sent")


def _outbox(events: list[Event]) -> Outbox:
    # on_refused reads only what the outbox itself recorded for the message.
    return Outbox(None, None, None, events.append)  # type: ignore[arg-type]


def test_every_quota_refusal_is_final() -> None:
    assert set(QUOTA_CODES) <= set(FAILED_CODES)
    assert {"quota_exceeded", "share_exceeded", "store_full"} == set(QUOTA_CODES)


def test_unwaited_refusal_shows_the_reason() -> None:
    events: list[Event] = []
    outbox = _outbox(events)
    outbox._index["m1"] = (ConversationId.direct("bob"), "p1")
    assert outbox.on_refused(Error("share_exceeded", SHARE_FULL, msg="m1"))
    delivery, error = events
    assert isinstance(delivery, DeliveryEvent) and delivery.delivery is Delivery.FAILED
    assert isinstance(error, ErrorEvent) and error.error.code == "share_exceeded"
    assert "your share of bob's queue is full" in str(error.error)


async def test_a_waiting_sender_gets_the_reason_once() -> None:
    events: list[Event] = []
    outbox = _outbox(events)
    outbox._index["m2"] = (ConversationId.direct("bob"), "p2")
    waiter = asyncio.get_running_loop().create_future()
    outbox._waiters["m2"] = waiter
    outbox.on_refused(Error("store_full", "the relay's store is full (1 GiB on disk)", msg="m2"))
    with pytest.raises(MessengerError, match="the relay's store is full") as caught:
        waiter.result()
    assert caught.value.code == "store_full"
    assert [type(e) for e in events] == [DeliveryEvent]  # no second report of the same error
