"""Two users chat through the real ``qsecret chat`` binary, each in its own tmux terminal.

Relay and KME pair run as real processes (tests.e2e.stack); keys are typed with
``send-keys`` and the result is read back with ``capture-pane``, as a person would see it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import PASSPHRASE, Stack, start_stack
from tests.tui_tmux.tmux import TmuxTerminal, qsecret_command

pytestmark = pytest.mark.slow

ONLINE = "● online"
START_TIMEOUT_S = 45.0  # unlock (Argon2id), relay login, first KME status
MESSAGE_TIMEOUT_S = 30.0  # handshake with QKD keys from the KME, relay round trip
QUIT_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def stack(tmux_binary: str, tmp_path_factory: pytest.TempPathFactory,
          pq_backend: str) -> Iterator[Stack]:
    """Relay + KME pair; bob has logged in once and alice has added him as a contact.
    (Needs tmux first, so nothing starts when the tests are skipped.)"""
    stack = start_stack(tmp_path_factory.mktemp("tmux-chat"), users=("alice", "bob"))
    try:
        yield stack
    finally:
        stack.stop()


def _open_chat(stack: Stack, terminal: Callable[[str], TmuxTerminal], handle: str) -> TmuxTerminal:
    argv = [*qsecret_command(), "chat", "--data", str(stack.profile(handle)),
            "--relay", stack.relay_url]
    return terminal(handle).start(argv, env={"QSECRET_PASSPHRASE": PASSPHRASE},
                                  cwd=stack.root)


def _line_with(screen: str, *parts: str) -> bool:
    return any(all(part in line for part in parts) for line in screen.splitlines())


def test_message_typed_by_one_user_appears_on_the_others_screen(
    stack: Stack, terminal: Callable[[str], TmuxTerminal], tmp_path: Path
) -> None:
    bob = _open_chat(stack, terminal, "bob")
    alice = _open_chat(stack, terminal, "alice")
    alice_screen = alice.wait_for(lambda s: ONLINE in s and "Message bob" in s,
                                  START_TIMEOUT_S, "alice online with bob's conversation open")
    assert "@alice" in alice_screen
    bob.wait_for(ONLINE, START_TIMEOUT_S, "bob online")

    token = secrets.token_hex(3)
    hello = f"hello bob from tmux {token}"
    alice.type_line(hello)
    bob.wait_for(lambda s: _line_with(s, "alice:", hello), MESSAGE_TIMEOUT_S,
                 "alice's message on bob's screen")
    # Bob has the conversation open, so alice's line turns from sent (✓) to read (✓✓).
    alice.wait_for(lambda s: _line_with(s, "me:", hello, "✓✓"), MESSAGE_TIMEOUT_S,
                   "the read mark on alice's message")

    reply = f"hi alice, got it {token}"
    bob.type_line(reply)
    alice.wait_for(lambda s: _line_with(s, "bob:", reply), MESSAGE_TIMEOUT_S,
                   "bob's reply on alice's screen")
    bob_screen = bob.screen()
    assert _line_with(bob_screen, "me:", reply)
    assert "QKD+ML-KEM-768+X25519" in bob_screen  # the key panel names the mixed sources

    for user in (alice, bob):
        user.press("C-q")
    for user in (alice, bob):
        assert user.wait_exit(QUIT_TIMEOUT_S) == 0, user.screen()
