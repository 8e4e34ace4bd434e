"""``--seed`` reproduces a run; without it every public choice comes from the OS (item 5)."""

from __future__ import annotations

import os

import pytest

from keysource.qkd import LinkParams
from keysource.qkd.auth import make_psk
from keysource.qkd.pair import PairLink
from keysource.qkd.protocol import KeyBatch
from keysource.qkd.public_random import PublicRandom

FAST = dict(frame_bits=32768, p_signal=0.6, p_decoy=0.3, min_sample_bits=1024)
BLOCKS = 3


def _run(seed: int | None, psk: bytes) -> tuple[list[KeyBatch], list[KeyBatch]]:
    link = PairLink(LinkParams(seed=seed, **FAST), psk)
    keys_a: list[KeyBatch] = []
    keys_b: list[KeyBatch] = []
    for _ in range(BLOCKS):
        result = link.run_block()
        assert not result.report.aborted, result.report.reason
        keys_a += result.keys_a
        keys_b += result.keys_b
    assert keys_a == keys_b and keys_a
    return keys_a, keys_b


def test_same_seed_and_psk_give_byte_identical_keys_and_key_ids() -> None:
    psk = make_psk()
    assert _run(7, psk) == _run(7, psk)


def test_a_different_seed_gives_different_keys_and_ids() -> None:
    psk = make_psk()
    first, _ = _run(7, psk)
    second, _ = _run(8, psk)
    ids_1 = {i for batch in first for i, _ in batch}
    ids_2 = {i for batch in second for i, _ in batch}
    keys_1 = {k for batch in first for _, k in batch}
    keys_2 = {k for batch in second for _, k in batch}
    assert not ids_1 & ids_2 and not keys_1 & keys_2


def test_without_a_seed_nothing_repeats() -> None:
    psk = make_psk()
    first, _ = _run(None, psk)
    second, _ = _run(None, psk)
    assert not ({i for b in first for i, _ in b} & {i for b in second for i, _ in b})
    assert not ({k for b in first for _, k in b} & {k for b in second for _, k in b})


def test_a_seeded_run_takes_no_public_choice_from_the_os(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Every public choice of a seeded run is derived from the seed: the OS is never asked."""
    psk = make_psk()  # the secret comes from the OS, before the link runs

    def refuse(size: int) -> bytes:
        raise AssertionError("a seeded run asked the OS for randomness")

    monkeypatch.setattr(os, "urandom", refuse)
    _run(11, psk)


def test_public_choices_are_separated_by_use_block_and_role() -> None:
    alice, bob = PublicRandom(7, "alice"), PublicRandom(7, "bob")
    draws = {alice.draw("sample positions", 0, 16), alice.draw("sample positions", 1, 16),
             alice.draw("toeplitz seed", 0, 16), bob.draw("sample positions", 0, 16),
             PublicRandom(8, "alice").draw("sample positions", 0, 16)}
    assert len(draws) == 5
    assert alice.draw("toeplitz seed", 3, 40) == PublicRandom(7, "alice").draw(
        "toeplitz seed", 3, 40)
    ids = alice.key_ids(0, 50)
    assert len(set(ids)) == 50 and ids == PublicRandom(7, "alice").key_ids(0, 50)
    unseeded = PublicRandom(None, "alice")
    assert unseeded.draw("x", 0, 32) != unseeded.draw("x", 0, 32)
