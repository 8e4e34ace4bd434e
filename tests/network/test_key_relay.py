"""Key relay hop by hop: the key arrives intact over 1-8 hops, each hop spends its own link
keys once, and tampered, replayed or misrouted frames are refused and counted."""

from __future__ import annotations

import os
import uuid

import pytest

from keysource.network.key_relay import (
    KEY_BYTES,
    KEYS_PER_HOP,
    Confirm,
    RelayFrame,
    RelayHeader,
    RelayLedger,
    RelayRefused,
    new_relay,
    next_hop,
    open_confirm,
    open_hop,
    seal_confirm,
    seal_hop,
)


class LinkPools:
    """Each link's shared key pool, one copy per end (as two KMEs hold it)."""

    def __init__(self, route: list[str], keys_per_link: int = 8) -> None:
        self.copies: dict[tuple[str, str], dict[str, bytes]] = {}
        for a, b in zip(route, route[1:], strict=False):
            keys = {str(uuid.uuid4()): os.urandom(KEY_BYTES) for _ in range(keys_per_link)}
            self.copies[(a, b)] = dict(keys)
            self.copies[(b, a)] = dict(keys)

    def take(self, here: str, there: str, count: int) -> list[tuple[str, bytes]]:
        pool = self.copies[(here, there)]
        ids = list(pool)[:count]
        return [(key_id, pool.pop(key_id)) for key_id in ids]

    def claim(self, here: str, there: str, *ids: str) -> list[bytes]:
        pool = self.copies[(here, there)]
        if not all(key_id in pool for key_id in ids):
            raise RelayRefused("malformed", "unknown or used link key")
        return [pool.pop(key_id) for key_id in ids]


def relay(route: list[str], key: bytes, pools: LinkPools) -> tuple[RelayFrame, ...]:
    """Run one relay along ``route`` as the nodes' shells would; every frame on the way."""
    (pad_id, pad), (mac_id, mac) = pools.take(route[0], route[1], KEYS_PER_HOP)
    frame = seal_hop(new_relay(str(uuid.uuid4()), "sae-alice", "sae-bob", route, pad_id,
                               mac_id), key, pad, mac)
    frames = [frame]
    while True:
        header = frame.header
        here = header.receiver
        pad, mac = pools.claim(here, header.sender, header.pad_id, header.mac_id)
        opened = open_hop(frame, pad, mac, here)
        if header.last_hop:
            assert opened == key
            return tuple(frames)
        (pad_id, pad), (mac_id, mac) = pools.take(here, header.route[header.hop + 2],
                                                  KEYS_PER_HOP)
        frame = seal_hop(next_hop(header, pad_id, mac_id), opened, pad, mac)
        frames.append(frame)


@pytest.mark.parametrize("hops", [1, 2, 4, 8])
def test_a_key_arrives_intact_and_each_hop_spends_two_link_keys(hops: int) -> None:
    route = [f"n{i}" for i in range(hops + 1)]
    pools = LinkPools(route)
    key = os.urandom(KEY_BYTES)
    frames = relay(route, key, pools)
    assert len(frames) == hops
    for pool in pools.copies.values():
        assert len(pool) == 8 - KEYS_PER_HOP  # both ends used the same two keys once
    # On the wire every hop's ciphertext differs (a fresh pad each) and none is the key.
    assert len({f.ciphertext for f in frames}) == hops and key not in {f.ciphertext
                                                                       for f in frames}


def one_hop() -> tuple[RelayFrame, bytes, bytes, bytes]:
    key, pad, mac = os.urandom(32), os.urandom(32), os.urandom(32)
    header = new_relay(str(uuid.uuid4()), "sae-a", "sae-b", ["x", "y", "z"],
                       str(uuid.uuid4()), str(uuid.uuid4()))
    return seal_hop(header, key, pad, mac), key, pad, mac


def test_any_change_to_a_frame_fails_its_mac() -> None:
    frame, _, pad, mac = one_hop()
    wire = frame.to_json()
    changes = {"key_ID": str(uuid.uuid4()), "master_SAE_ID": "sae-eve", "slave_SAE_ID": "sae-eve",
               "route": ["x", "y", "eve"], "pad_ID": str(uuid.uuid4()),
               "mac_ID": str(uuid.uuid4()), "relay_id": str(uuid.uuid4()),
               "ciphertext": bytes(32).hex(), "tag": bytes(16).hex()}
    for field, value in changes.items():
        forged = RelayFrame.from_json({**wire, field: value})
        with pytest.raises(RelayRefused) as refused:
            open_hop(forged, pad, mac, "y")
        assert refused.value.reason == "bad_mac", field
    assert len(open_hop(RelayFrame.from_json(wire), pad, mac, "y")) == 32  # the real one opens


def test_the_key_is_recovered_only_with_the_pad_and_never_shown() -> None:
    frame, key, pad, mac = one_hop()
    assert open_hop(frame, pad, mac, "y") == key
    assert open_hop(frame, os.urandom(32), mac, "y") != key  # the MAC does not cover the pad
    assert key.hex() not in repr(frame) and frame.ciphertext.hex() not in repr(frame)
    with pytest.raises(RelayRefused) as refused:
        open_hop(frame, pad, mac, "y2")
    assert refused.value.reason == "not_on_route"


@pytest.mark.parametrize(("field", "value"), [
    ("relay_id", "not-a-uuid"), ("route", ["x"]), ("route", ["x", "y", "x"]), ("hop", 2),
    ("hop", -1), ("hop", True), ("ciphertext", "zz"), ("ciphertext", "00"), ("tag", "00" * 15),
    ("master_SAE_ID", ""), ("slave_SAE_ID", "a\nb"), ("route", "x,y"),
])
def test_malformed_frames_are_refused(field: str, value: object) -> None:
    frame, *_ = one_hop()
    with pytest.raises(RelayRefused) as refused:
        RelayFrame.from_json({**frame.to_json(), field: value})
    assert refused.value.reason == "malformed"


def test_the_same_key_cannot_pad_and_authenticate() -> None:
    same = str(uuid.uuid4())
    with pytest.raises(RelayRefused):
        new_relay(str(uuid.uuid4()), "a", "b", ["x", "y"], same, same)


def test_a_replayed_relay_is_refused_and_counted() -> None:
    ledger = RelayLedger()
    frame, *_ = one_hop()
    ledger.check_new(frame.header, now=0.0)
    with pytest.raises(RelayRefused) as refused:
        ledger.check_new(frame.header, now=1.0)
    assert refused.value.reason == "replayed" and ledger.refused["replayed"] == 1
    # The next hop of the same relay is a different frame, not a replay.
    ledger.check_new(next_hop(frame.header, str(uuid.uuid4()), str(uuid.uuid4())), now=1.0)


def test_the_ledger_forgets_old_relays_and_stays_bounded() -> None:
    ledger = RelayLedger(remember_s=10.0, max_remembered=100)
    for n in range(300):
        frame, *_ = one_hop()
        ledger.check_new(frame.header, now=float(n) / 100)
    assert len(ledger._seen) <= 100
    frame, *_ = one_hop()
    ledger.check_new(frame.header, now=0.0)
    ledger.check_new(RelayHeader(**{**frame.header.__dict__, "hop": 1}), now=20.0)
    assert (frame.header.relay_id, 0) not in ledger._seen  # older than remember_s


def test_two_phase_delivery() -> None:
    ledger = RelayLedger(confirm_timeout_s=30.0)
    frame, key, *_ = one_hop()
    header = frame.header
    ledger.hold(header, key, now=0.0)
    assert ledger.waiting == 1
    # Y's confirm comes back over y -> x with a one-time MAC key of that link.
    mac = os.urandom(32)
    confirm = seal_confirm(Confirm(header.relay_id, header.key_id, header.route, 1,
                                   str(uuid.uuid4())), mac)
    open_confirm(Confirm.from_json(confirm.to_json()), mac, "x")
    with pytest.raises(RelayRefused) as refused:
        open_confirm(confirm, os.urandom(32), "x")
    assert refused.value.reason == "bad_mac"
    released = ledger.confirmed(confirm, now=5.0)
    assert released.key == key and released.master == "sae-a"
    with pytest.raises(RelayRefused) as refused:  # never handed out twice
        ledger.confirmed(confirm, now=6.0)
    assert refused.value.reason == "unknown_relay"


def test_an_unconfirmed_key_expires_and_a_late_confirm_is_refused() -> None:
    ledger = RelayLedger(confirm_timeout_s=30.0)
    frame, key, *_ = one_hop()
    ledger.hold(frame.header, key, now=0.0)
    assert ledger.expire(now=10.0) == []
    (gone,) = ledger.expire(now=31.0)
    assert gone.key_id == frame.header.key_id and ledger.waiting == 0
    ledger.hold(frame.header, key, now=100.0)
    late = Confirm(frame.header.relay_id, frame.header.key_id, frame.header.route, 1,
                   str(uuid.uuid4()), bytes(16))
    with pytest.raises(RelayRefused) as refused:
        ledger.confirmed(late, now=200.0)
    assert refused.value.reason == "expired"
