"""A refusal by the relay is an error the user sees: a non-zero exit and the relay's reason
from the CLI, a line in the TUI.

The profiles here carry a prekey bundle whose signed part is larger than the relay takes
(a conservative KEM prekey of ``MAX_SIGNED_PART_BYTES`` bytes, as a Classic McEliece key
would be), properly signed, so the only thing wrong is its size: the real relay answers
the upload at login with ``too_large``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from client.config import load_config
from client.messenger.api import ErrorEvent
from client.messenger.profile import ProfileGate, open_profile
from client.protocol.bundle import Prekey, signed_part_message
from client.store.store import Store
from client.tui.app import QsecretApp
from relay.wire import MAX_SIGNED_PART_BYTES
from tests.client.pilot_helpers import until
from tests.client.test_tui_pilot import SIZE
from tests.e2e.stack import PASSPHRASE, Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pq_backend: str) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("refusals"))
    try:
        stack.start_relay()
        stack.start_kme()
        for handle in ("erin", "fay"):
            stack.init(handle)
            _oversize_prekeys(stack.profile(handle) / "store.sqlite3")
        yield stack
    finally:
        stack.stop()


def _oversize_prekeys(path: Path) -> None:
    """Re-sign the bundle with a conservative prekey one byte over the relay's limit."""
    with Store.open(PASSPHRASE, path, create=False) as store:
        loaded_identity, loaded = store.load_identity(), store.load_prekeys()
        assert loaded_identity is not None and loaded is not None
        (handle, identity), (bundle, secrets) = loaded_identity, loaded
        big = Prekey(1, "Classic-McEliece-348864", os.urandom(MAX_SIGNED_PART_BYTES + 1))
        part = replace(bundle.part, conservative_prekey=big)
        signed = part.encode()
        signature = identity.sign(signed_part_message(handle, identity.signing_public, signed))
        store.save_prekeys(replace(bundle, signed=signed, signed_signature=signature,
                                   part=part), secrets)


def test_recv_exits_non_zero_with_the_relays_reason(stack: Stack) -> None:
    result = stack.cli("erin", "recv", "--timeout", "20")
    assert result.returncode != 0, result.stdout
    assert "refused" in result.stderr and "prekey" in result.stderr
    assert "too_large" in result.stderr  # the relay's own code, not a generic failure
    assert "Traceback" not in result.stderr
    assert "prekeys are on the relay" not in result.stderr
    # nobody can add erin: which is why recv must not pretend all went well
    added = stack.cli("fay", "contacts", "add", "erin")
    assert added.returncode != 0


async def test_the_tui_shows_the_refusal(stack: Stack, tmp_path: Path) -> None:
    config = load_config(stack.profile("fay"), relay_url=stack.relay_url)
    messenger = open_profile(config, PASSPHRASE)
    errors: list[ErrorEvent] = []
    messenger.subscribe(lambda e: errors.append(e) if isinstance(e, ErrorEvent) else None)
    app = QsecretApp(ProfileGate(config), export_dir=tmp_path, messenger=messenger)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: any(
            "too_large" in str(n.title) or "too_large" in str(n.message)
            for n in app._notifications), timeout=30)
        await pilot.press("ctrl+q")
    assert errors and errors[0].error.code == "too_large"
    assert errors[0].error.reason  # the relay's words travel with its code
