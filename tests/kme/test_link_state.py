"""The link state lives in the pool file, written with the keys (keysource.kme.linkstate)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from keysource.kme.link import LinkMonitor, run_link_endpoint
from keysource.kme.linkstate import DEFAULT_LINK
from keysource.kme.node import KmeNode, StaticSaeRegistry
from keysource.kme.pool import BadBatch, KeyPool
from keysource.qkd.auth import ChannelAuth, make_psk, split_psk
from keysource.qkd.net import AuthStore
from keysource.qkd.params import LinkParams
from keysource.qkd.protocol import AliceEndpoint, BobEndpoint

from .conftest import random_batch

LEGACY_REFILL = bytes(range(64))

# small blocks; a small authentication pool, so that blocks refill it and still make keys
PARAMS = LinkParams(frame_bits=32768, p_signal=0.6, p_decoy=0.3, min_sample_bits=1024,
                    auth_pool_bytes=1024)


def test_keys_and_link_state_are_stored_together_or_not_at_all(tmp_path: Path) -> None:
    with KeyPool(tmp_path / "pool.sqlite") as pool:
        good = random_batch(3)
        assert pool.add_keys(good, link_state=(DEFAULT_LINK, b"one")) == 3
        with pytest.raises(BadBatch):
            pool.add_keys(random_batch(2) + [("not-a-uuid", b"x" * 32)],
                          link_state=(DEFAULT_LINK, b"two"))
        assert pool.link_state(DEFAULT_LINK) == b"one"  # the failed batch changed nothing
        assert pool.stats().stored == 3
        assert pool.add_keys([], link_state=(DEFAULT_LINK, b"three")) == 0
        assert pool.link_state(DEFAULT_LINK) == b"three"
        assert pool.link_state("another link") is None


def _run_link(tmp_path: Path, psk: bytes, good_blocks: int,
              legacy: dict[str, Path] | None = None) -> tuple[AliceEndpoint, BobEndpoint]:
    """Run the link between two KME nodes (real TCP on loopback, pools under ``tmp_path``)
    until both ends reported ``good_blocks`` good blocks; check both pools hold the same keys
    and return both ends as their stored states restore them."""
    nodes = {role: KmeNode(kme_id=role, peer_kme_id="other", allocator=role == "alice",
                           pool=KeyPool(tmp_path / role / "pool.sqlite"),
                           saes=StaticSaeRegistry(()))  # the link only: no SAE asks
             for role in ("alice", "bob")}
    monitors: dict[str, LinkMonitor] = {}

    async def run() -> None:
        stop = asyncio.Event()
        listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Watch(LinkMonitor):
            def on_report(self, report: object) -> None:
                super().on_report(report)
                if all(m.blocks - m.aborted >= good_blocks for m in monitors.values()):
                    stop.set()

        monitors.update({role: Watch() for role in nodes})
        bob = asyncio.create_task(run_link_endpoint(
            nodes["bob"], role="bob", host="127.0.0.1", port=0, params=PARAMS, psk=psk,
            auth_store=legacy and legacy["bob"], monitor=monitors["bob"], stop=stop,
            on_listening=listening.set_result))
        port = await asyncio.wait_for(listening, 30)
        alice = asyncio.create_task(run_link_endpoint(
            nodes["alice"], role="alice", host="127.0.0.1", port=port, params=PARAMS,
            psk=psk, auth_store=legacy and legacy["alice"], monitor=monitors["alice"],
            stop=stop))
        await asyncio.wait_for(asyncio.gather(alice, bob), 120)

    try:
        asyncio.run(run())
        states = {role: node.pool.link_state(DEFAULT_LINK) for role, node in nodes.items()}
        keys = {role: {k: v for k, v in node.pool._db.execute(
            "SELECT key_id, material FROM keys")} for role, node in nodes.items()}
    finally:
        for node in nodes.values():
            node.close()
    assert states["alice"] is not None and states["bob"] is not None
    alice = AliceEndpoint.from_state(PARAMS, states["alice"])
    bob = BobEndpoint.from_state(PARAMS, states["bob"])
    if bob.pending is not None and bob.pending.number == alice.last_committed:
        keys["bob"].update(bob.pending.pending[2][:alice.last_count])  # type: ignore[index]
    assert keys["alice"] == keys["bob"] and keys["alice"]
    return alice, bob


def test_a_link_resumes_from_the_old_auth_file_then_keeps_its_state_in_the_pool(
        tmp_path: Path) -> None:
    """Upgrade: the KMEs kept the authentication streams in link-auth.state; the first start
    reads that file (so no pad it marked used is used again), the pool takes over, the file
    goes."""
    psk = make_psk(2048)
    legacy = {}
    for role in ("alice", "bob"):
        auth = ChannelAuth.from_psk(psk, role)
        for index in range(5):  # pads the old version had used before the upgrade
            auth.tag(index, b"before the upgrade")
        auth.recv.burn_through(4)
        auth.send.refill(LEGACY_REFILL)  # a refill only the old file knows about
        auth.recv.refill(LEGACY_REFILL)
        legacy[role] = tmp_path / role / "link-auth.state"
        legacy[role].parent.mkdir()
        AuthStore(legacy[role]).save(auth)
    alice, bob = _run_link(tmp_path, psk, 3, legacy)
    assert not legacy["alice"].exists() and not legacy["bob"].exists()
    assert alice.auth.send.next_index > 5 and bob.auth.send.next_index > 5
    # the streams went on from the old file: its refill follows the PSK's 32 pads
    for stream in (alice.auth.send, alice.auth.recv, bob.auth.send, bob.auth.recv):
        assert stream.next_index <= 32 and stream.pad(32) == LEGACY_REFILL[:32]
    assert alice.next_block >= 3


def test_a_new_psk_at_both_ends_restarts_authentication_and_keeps_the_blocks(
        tmp_path: Path) -> None:
    """Re-provisioning (after AuthKeyExhausted): the stored streams of the old PSK give way to
    the new one; block numbers and the pools' agreement carry on."""
    first, _ = _run_link(tmp_path, make_psk(2048), 2)
    new_psk = make_psk(2048)
    alice, bob = _run_link(tmp_path, new_psk, 2)
    assert alice.next_block > first.next_block and alice.psk_id != first.psk_id
    # the streams are the new PSK's (its first pads spent on the two blocks since)
    a_to_b, b_to_a = split_psk(new_psk)
    for stream, half in ((alice.auth.send, a_to_b), (bob.auth.recv, a_to_b),
                         (bob.auth.send, b_to_a), (alice.auth.recv, b_to_a)):
        assert 0 < stream.next_index < 16
        assert stream.pad(16) == half[16 * 32: 17 * 32]
