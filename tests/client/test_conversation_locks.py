"""One lock per conversation, never held across a network wait.

alice's KME sits behind a forwarder that can hold its answers. While a message to dave
waits for QKD keys (one-time-pad mode needs fresh ones for every message), a message to
bob -- which needs none -- goes out at once; before, one messenger-wide lock held across
the KME request made bob's message wait for dave's.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Iterator

import pytest

from client.config import load_config
from client.messenger.api import ConversationId, ConversationKind, MessageEvent
from client.messenger.profile import open_profile
from tests.e2e.holdproxy import HoldProxy
from tests.e2e.stack import PASSPHRASE, Stack

pytestmark = pytest.mark.slow


def _frames(task: asyncio.Task[object]) -> Iterator[str]:
    """The names of the coroutines ``task`` is suspended in, outermost first."""
    awaiting: object = task.get_coro()
    while awaiting is not None:
        code = getattr(awaiting, "cr_code", None) or getattr(awaiting, "gi_code", None)
        if isinstance(code, types.CodeType):
            yield code.co_name
        awaiting = getattr(awaiting, "cr_await", None) or getattr(awaiting, "gi_yieldfrom", None)


async def _until(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_a_conversation_waiting_for_its_kme_does_not_hold_up_another(
        stack: Stack) -> None:
    proxy = HoldProxy(stack.port_a).start()
    config = load_config(stack.profile("alice"), relay_url=stack.relay_url, kme_url=proxy.url)
    alice = open_profile(config, PASSPHRASE)
    received: list[str] = []
    alice.subscribe(lambda e: received.append(e.message.text)
                    if isinstance(e, MessageEvent) else None)
    await alice.start()
    try:
        await alice.wait_online(20)
        await alice.send_and_wait("bob", "hello bob")  # bob's chain is open
        # dave sits at the other KME of the link, as bob does, so QKD keys can pair
        await asyncio.to_thread(stack.init, "dave")
        await asyncio.to_thread(stack.cli, "dave", "send", "alice", "hi alice", check=True)
        await _until(lambda: "hi alice" in received)
        # One-time-pad mode: every message to dave needs fresh QKD keys first (the pad is
        # empty); bob has not answered, so the next message to him needs none.
        await alice.set_mode("dave", "otp")
        assert alice.store.load_session("dave").otp_shortfall(32) > 0  # type: ignore[union-attr]
        assert alice.store.load_session("bob").send_plan().qkd_keys == 0  # type: ignore[union-attr]
        proxy.hold()
        to_dave = asyncio.create_task(alice.send("dave", "waits for QKD keys"))
        await _until(lambda: "enc_keys" in list(_frames(to_dave)))
        view = await alice.send("bob", "goes out now")
        assert not to_dave.done()  # bob's went while dave's still waits for the KME
        assert view.conversation == ConversationId(ConversationKind.DIRECT, "bob")
        proxy.release()
        sent = await to_dave
        assert sent.text == "waits for QKD keys"
    finally:
        proxy.release()
        await alice.stop()
        proxy.stop()
