"""A group message's delivered/read counts in the sender's TUI, against a real relay, two QKD
nodes and the other members' ``qsecret`` processes: alice writes in the app; bob reads it
(``recv``), carol only receives it (her ``send`` takes the backlog in without showing it);
alice's line goes from "0/2" to "✓ 2/2 delivered · 1/2 read" as their receipts arrive, and
the counts are the same when she opens the group again after a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from client.tui.widgets.conversation import Conversation
from tests.client.pilot_helpers import online, until
from tests.client.test_tui_groups import _app
from tests.e2e.stack import Stack
from tests.network.conftest import logged_in_on_two_nodes

SIZE = (150, 40)
pytestmark = pytest.mark.slow
AT = {"alice": "x", "carol": "x", "bob": "y"}
NODES = {"x": ["sae-alice", "sae-carol"], "y": ["sae-bob"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with logged_in_on_two_nodes(tmp_path_factory.mktemp("tui-greceipts"), AT, NODES) as stack:
        stack.cli("alice", "group", "create", "duo", "bob", "carol", check=True)
        for handle in ("bob", "carol"):
            stack.cli(handle, "recv", check=True)
        yield stack



async def test_the_sender_sees_delivered_and_read_counts_move(stack: Stack) -> None:
    app = _app(stack, "alice")
    async with app.run_test(size=SIZE) as pilot:
        screen = await online(pilot)
        conversation = screen.query_one(Conversation)
        (group,) = screen.messenger.group_list()
        screen.open_group(group.group_id)
        screen.send_to_group(group.group_id, "who reads this")
        await until(pilot, lambda: "who reads this" in conversation.texts(), timeout=60)
        (message_id,) = [m for m, line in conversation._lines.items()
                         if line.message.text == "who reads this"]
        assert conversation.line_text(message_id).endswith(
            "who reads this ✓ 0/2 delivered · 0/2 read")
        await asyncio.to_thread(stack.cli, "bob", "recv", check=True)
        await asyncio.to_thread(stack.cli, "carol", "send", "@duo", "got it", check=True)
        await until(pilot, lambda: conversation.line_text(message_id).endswith(
            "✓ 2/2 delivered · 1/2 read"), timeout=60)
        await until(pilot, lambda: "got it" in conversation.texts(), timeout=60)
        await pilot.press("ctrl+q")
    # Kept in the store: shown the same when the group is opened again.
    app = _app(stack, "alice")
    async with app.run_test(size=SIZE) as pilot:
        screen = await online(pilot)
        screen.open_group(group.group_id)
        conversation = screen.query_one(Conversation)
        assert conversation.line_text(message_id).endswith(
            "who reads this ✓ 2/2 delivered · 1/2 read")
        await pilot.press("ctrl+q")
