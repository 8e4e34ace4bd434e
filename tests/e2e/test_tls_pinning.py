"""wss:// to a self-signed relay: the client pins its certificate on first use, then holds it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from client.config import load_config
from client.processes import ServiceProcess
from tests.e2e.stack import Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory, pq_backend: str) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("tls"), relay_scheme="wss")
    try:
        stack.relay = ServiceProcess(
            "relay", ["relay", "--port", str(stack.relay_port), "--data",
                      str(stack.root / "relay"), "--self-signed"],
            log=stack.root / "relay.log",
        ).start()
        stack.relay.wait_for("relay listening")
        stack.start_kme()
        yield stack
    finally:
        stack.stop()


def test_pin_on_first_use_then_refuse_another_certificate(tls_stack: Stack) -> None:
    stack = tls_stack
    printed = next(line for line in stack.relay.lines if "fingerprint" in line)  # type: ignore[union-attr]
    announced = printed.rsplit(" ", 1)[-1]

    def cli(handle: str, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
        return stack.cli(handle, *args, check=check)

    for handle in ("alice", "bob"):
        stack.init(handle)
    cli("bob", "recv")
    cli("alice", "send", "bob", "over wss")
    assert "over wss" in cli("bob", "recv").stdout
    # Both clients pinned exactly the fingerprint the relay printed.
    for handle in ("alice", "bob"):
        assert load_config(stack.profile(handle)).relay_fingerprint == announced

    # A different pinned certificate (as if someone were in the middle) is refused.
    config_file = stack.profile("alice") / "config.toml"
    text = config_file.read_text()
    config_file.write_text(text.replace(announced, "00:" * 31 + "00"))
    result = cli("alice", "send", "bob", "must not leave", check=False)
    assert result.returncode != 0
    assert "does not match the pinned fingerprint" in result.stderr
