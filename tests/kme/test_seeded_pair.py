"""``qsecret kme pair --seed 7`` run twice hands out the same first 100 keys (issue 15).

Two real ``qsecret kme pair`` processes, one after the other, each with its own data directory
(so its own PKI and its own random link PSK: the keys do not depend on the PSK, only on the
seed); alice takes 100 keys through the ETSI API and bob fetches them by key_ID.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keysource.kme.runtime import SAE_A, SAE_B

from .conftest import start_pair

WANTED = 100


def _first_keys(data: Path, seed: str, wanted: int = WANTED, *extra: str
                ) -> list[tuple[str, bytes]]:
    pair = start_pair(data, "--link", "emulated", "--seed", seed,
                      "--keys-ready", str(wanted), *extra)
    keys, fetched = [], []
    try:
        pair.process.wait_for(r"^keys ready: ", timeout_s=300)
        with pair.alice() as alice, pair.bob() as bob:
            while len(keys) < wanted:  # at most 100 a request (max_key_per_request: 128)
                some = alice.get_enc_keys(SAE_B, min(100, wanted - len(keys)))
                fetched += bob.get_dec_keys(SAE_A, [k.key_ID for k in some])
                keys += some
    finally:
        pair.process.stop()
    assert [(k.key_ID, k.key) for k in fetched] == [(k.key_ID, k.key) for k in keys]
    return [(k.key_ID, k.key) for k in keys]


@pytest.mark.slow
def test_kme_pair_with_the_same_seed_hands_out_the_same_first_keys(tmp_path: Path) -> None:
    first = _first_keys(tmp_path / "run1", "7")
    second = _first_keys(tmp_path / "run2", "7")
    assert len(first) == WANTED and len(set(first)) == WANTED
    assert first == second
    other = _first_keys(tmp_path / "run3", "8")
    assert not {i for i, _ in other} & {i for i, _ in first}


@pytest.mark.slow
def test_two_lanes_with_the_same_seed_hand_out_the_same_keys(tmp_path: Path) -> None:
    """``--lanes 2``: blocks from two worker processes, keys still in a seeded order. 300 keys
    span the first block of each lane (about 120-150 keys a block)."""
    wanted = 300
    first = _first_keys(tmp_path / "run1", "7", wanted, "--lanes", "2")
    second = _first_keys(tmp_path / "run2", "7", wanted, "--lanes", "2")
    assert len(set(first)) == wanted
    assert first == second
    one_lane = _first_keys(tmp_path / "run3", "7", wanted)
    assert first[:WANTED] == one_lane[:WANTED]  # lane 0's first block: the seed's own
    assert first != one_lane  # then lane 1's block, not lane 0's second
