"""Which SAEs a KME of a pair serves (keysource.kme.served_saes), and the read-only peek a
relay hop opens its frames with before its claim is durable (KeyPool.peek_for_slave)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from keysource.kme.pki import Pki, PkiSaeRegistry
from keysource.kme.pool import KeyLookupError, KeyPool
from keysource.kme.served_saes import ServedSaes
from tests.kme.conftest import random_batch


def _pair(tmp_path: Path) -> tuple[Pki, ServedSaes, ServedSaes]:
    pki = Pki(tmp_path / "pki")
    pki.ensure(kme_ids=["kme-alice", "kme-bob"], sae_ids=["sae-alice", "sae-bob", "sae-carol"])
    a = ServedSaes(PkiSaeRegistry(pki), tmp_path / "a.sqlite", defaults=["sae-alice"])
    b = ServedSaes(PkiSaeRegistry(pki), tmp_path / "b.sqlite", defaults=["sae-bob"])
    a.rival, b.rival = b, a
    return pki, a, b


def test_an_sae_is_served_where_it_calls_and_moves_with_its_calls(tmp_path: Path) -> None:
    pki, a, b = _pair(tmp_path)
    try:
        assert a.knows("sae-alice") and not a.knows("sae-bob") and b.knows("sae-bob")
        assert not a.knows("sae-carol") and not b.knows("sae-carol")
        assert a.is_enrolled("sae-carol")
        a.called_by("sae-carol")
        assert a.knows("sae-carol") and not b.knows("sae-carol")
        b.called_by("sae-carol")  # its profile now names the other KME
        assert b.knows("sae-carol") and not a.knows("sae-carol")
        a.called_by("sae-mallory")  # no certificate: nobody is recorded
        assert not a.knows("sae-mallory") and "sae-mallory" not in a.served()
    finally:
        a.close()
        b.close()
    # Kept across a restart; the defaults are set only when the record is first made.
    again = ServedSaes(PkiSaeRegistry(pki), tmp_path / "a.sqlite", defaults=["sae-bob"])
    try:
        assert again.served() == ["sae-alice"]
    finally:
        again.close()


def test_a_removed_certificate_unregisters_a_served_sae(tmp_path: Path) -> None:
    pki, a, b = _pair(tmp_path)
    try:
        a.called_by("sae-carol")
        pki.sae("sae-carol").cert.unlink()
        assert not a.knows("sae-carol") and not a.is_enrolled("sae-carol")
    finally:
        a.close()
        b.close()


def test_peek_reads_what_the_claim_then_takes_and_writes_nothing(tmp_path: Path) -> None:
    pool = KeyPool(tmp_path / "pool.sqlite", redelivery_grace_s=0)
    try:
        pool.add_keys(random_batch(6))
        binding = pool.bind(binding_id=str(uuid.uuid4()), master_SAE_ID="m", slave_SAE_ID="s",
                            master_kme="x", local_kme="y", sizes=[256, 512])
        heads = [k.key_ID for k in binding.keys]  # the slave's side: it fetches here
        before = pool.stats()
        peeked = pool.peek_for_slave("m", "s", heads)
        assert pool.stats() == before
        assert pool.peek_for_slave("m", "s", heads) == peeked  # nothing was taken
        with pytest.raises(KeyLookupError) as foreign:
            pool.peek_for_slave("m", "other", heads)
        assert foreign.value.foreign
        taken = pool.take_for_slave("m", "s", heads)
        assert [(k.key_ID, k.key) for k in taken] == [(k.key_ID, k.key) for k in peeked]
        with pytest.raises(KeyLookupError) as gone:
            pool.peek_for_slave("m", "s", heads)
        assert list(gone.value.unknown) == heads
    finally:
        pool.close()
