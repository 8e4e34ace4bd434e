"""An eavesdropper on the QKD link: QBER near 25 %, blocks abort, the key panel raises the alarm."""

from __future__ import annotations

import asyncio
import time

import pytest

from client.config import load_config
from client.messenger.profile import open_profile
from client.tui.widgets.key_panel import render_key_status
from tests.e2e.stack import PASSPHRASE, Stack

pytestmark = pytest.mark.slow


async def test_full_intercept_raises_the_alarm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stack = Stack(tmp_path, kme_args=("--eve-fraction", "1"))
    try:
        stack.start_relay()
        stack.start_kme()
        stack.init("alice")
        messenger = open_profile(load_config(stack.profile("alice"), relay_url=stack.relay_url),
                                 PASSPHRASE)
        await messenger.start()
        try:
            deadline = time.monotonic() + 60
            status = messenger.key_status()
            # "QKD link down" may come first, while the link is still starting: wait for
            # the eavesdropper's own alarm, the QBER over the threshold.
            while "QBER" not in (status.link_alarm or "") and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                status = messenger.key_status()
        finally:
            await messenger.stop()
    finally:
        stack.stop()
    assert status.link_alarm is not None, "no alarm within 60 s"
    assert status.qber is not None and 0.20 < status.qber < 0.32
    assert status.pool_keys == 0  # every block aborted: no key from an eavesdropped link
    assert "eavesdropper" in render_key_status(status).plain
