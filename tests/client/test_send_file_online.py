"""'qsecret send-file' makes its offer while the relay login is under way (client/cli/files.py):
a login that fails must still be the one-line reason, with no traceback and no wait beyond
--timeout, even though the offer was started beside it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.cli.errors import EXIT_FAILED
from tests.e2e.stack import Stack, free_port, one_line_failure, relay_with_alice


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with relay_with_alice(tmp_path_factory.mktemp("send-file-online")) as stack:
        yield stack



def test_an_unreachable_relay_is_the_reason_within_the_timeout(relay: Stack,
                                                              tmp_path: Path) -> None:
    source = tmp_path / "file.bin"
    source.write_bytes(b"x" * 1000)
    start = time.monotonic()
    result = relay.cli(None, "send-file", "bob", str(source), "--data",
                       str(relay.profile("alice")), "--relay", f"ws://127.0.0.1:{free_port()}",
                       "--timeout", "1")
    assert result.returncode == EXIT_FAILED
    assert "could not reach the relay" in one_line_failure(result, "send-file")
    assert time.monotonic() - start < 8  # the login's 1 s, not the offer's own waits (10 s)


def test_an_offer_to_a_handle_without_prekeys_fails_with_its_reason(relay: Stack,
                                                                   tmp_path: Path) -> None:
    """The login succeeds; the offer fails (no such peer): its own reason is reported."""
    source = tmp_path / "file.bin"
    source.write_bytes(b"x" * 1000)
    result = relay.cli("alice", "send-file", "nobody", str(source), "--timeout", "5")
    assert result.returncode == EXIT_FAILED
    assert "nobody" in one_line_failure(result, "send-file")
