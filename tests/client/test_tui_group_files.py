"""Sending a file in a group chat of the TUI works as in a one-to-one chat: Ctrl+T, the
paths, Enter. alice runs the app in-process; bob and carol receive with their own
``qsecret receive-files`` processes, and each ends with the same bytes."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.messenger.api import TransferState
from client.tui.screens.send_files import SendFilesScreen
from tests.client.pilot_helpers import online, until
from tests.client.test_tui_groups import SIZE, _app, _type
from tests.e2e.stack import Stack
from tests.network.conftest import logged_in_on_two_nodes

pytestmark = pytest.mark.slow
AT = {"alice": "x", "bob": "y", "carol": "y"}
NODES = {"x": ["sae-alice"], "y": ["sae-bob", "sae-carol"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with logged_in_on_two_nodes(tmp_path_factory.mktemp("tui-gfiles"), AT, NODES) as stack:
        stack.cli("alice", "group", "create", "duo", "bob", "carol", check=True)
        for handle in ("bob", "carol"):
            stack.cli(handle, "recv", check=True)
        yield stack


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_ctrl_t_in_a_group_chat_sends_the_file_to_every_member(stack: Stack) -> None:
    source = stack.root / "notes.bin"
    source.write_bytes(bytes(range(256)) * 1500)
    app = _app(stack, "alice")
    async with app.run_test(size=SIZE) as pilot:
        screen = await online(pilot)
        group = next(g for g in screen.messenger.group_list() if g.name == "duo")
        screen.open_group(group.group_id)
        await until(pilot, lambda: screen.group is not None)
        await pilot.press("ctrl+t")
        assert isinstance(app.screen, SendFilesScreen) and app.screen.peer == "@duo"
        await _type(pilot, str(source))
        await pilot.press("enter")

        def sent() -> bool:
            return any(t.group == "duo" and t.outgoing and t.state is TransferState.COMPLETE
                       for t in screen.messenger.transfers())

        await until(pilot, sent, timeout=60)
        await pilot.press("ctrl+q")
    for member in ("bob", "carol"):
        downloads = stack.root / f"dl-{member}"
        await asyncio.to_thread(stack.cli, member, "receive-files", "--accept", "all",
                                "--count", "1", "--idle", "60", "--downloads",
                                str(downloads), check=True)
        assert _sha(downloads / "notes.bin") == _sha(source), member
