"""An empty QKD pool: `prefer` degrades visibly then recovers; `require` refuses clearly."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest

from client.config import load_config
from client.messenger.profile import open_profile
from client.tui.widgets.key_panel import render_key_status
from keysource.kme.pool import KeyPool
from keysource.kme.runtime import pool_path
from tests.conftest import degraded_sources, full_sources
from tests.e2e.stack import PASSPHRASE, Stack, start_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def empty(tmp_path_factory: pytest.TempPathFactory, pq_backend: str) -> Iterator[Stack]:
    """KMEs without a QKD link: their pools stay empty until the test fills them."""
    stack = start_stack(tmp_path_factory.mktemp("empty"), "--link", "none")
    try:
        stack.init("carol", "--qkd-policy", "require")
        yield stack
    finally:
        stack.stop()


def _received(stack: Stack, handle: str) -> list[dict]:
    out = stack.cli(handle, "recv", "--json", check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def _fill_pools(stack: Stack, count: int) -> None:
    """Put the same keys in both pools, as a QKD link would."""
    batch = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(count)]
    for kme_id in ("kme-alice", "kme-bob"):
        pool = KeyPool(pool_path(stack.root / "kme", kme_id))
        try:
            pool.add_keys(batch)
        finally:
            pool.close()


def test_require_refuses_without_qkd(empty: Stack) -> None:
    result = empty.cli("carol", "send", "bob", "must not leave")
    assert result.returncode != 0
    assert "QKD policy is 'require'" in result.stderr
    assert "must not leave" not in [m["text"] for m in _received(empty, "bob")]


def test_prefer_degrades_then_recovers(empty: Stack, pq_backend: str) -> None:
    empty.cli("alice", "send", "bob", "sent without QKD", check=True)
    got = _received(empty, "bob")
    assert [m["text"] for m in got] == ["sent without QKD"]
    assert got[0]["keys"] in degraded_sources(pq_backend)

    # The key panel says so.
    alice = open_profile(load_config(empty.profile("alice"), relay_url=empty.relay_url),
                         PASSPHRASE)
    try:
        status = alice.key_status("bob")
    finally:
        alice.store.close()
    assert status.degraded
    assert "DEGRADED" in render_key_status(status).plain

    # QKD keys come back: the next ratchet turns re-mix them in, on both sides.
    _fill_pools(empty, 64)
    empty.cli("bob", "send", "alice", "bob after refill", check=True)
    answers = _received(empty, "alice")
    assert [m["text"] for m in answers] == ["bob after refill"]
    assert answers[0]["keys"] in full_sources(pq_backend)
    empty.cli("alice", "send", "bob", "alice after refill", check=True)
    answers = _received(empty, "bob")
    assert [m["text"] for m in answers] == ["alice after refill"]
    assert answers[0]["keys"] in full_sources(pq_backend)
    # carol, under 'require', can now open her session too.
    empty.cli("carol", "send", "bob", "now with QKD", check=True)
    answers = _received(empty, "bob")
    assert "now with QKD" in [m["text"] for m in answers]
    assert {m["keys"] for m in answers if m["text"] == "now with QKD"} <= full_sources(
        pq_backend)
