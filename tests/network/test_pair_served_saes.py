"""Which SAEs a KME of a pair serves (keysource.kme.served_saes)."""

from __future__ import annotations

from pathlib import Path

from keysource.kme.pki import Pki, PkiSaeRegistry
from keysource.kme.served_saes import ServedSaes


def _pair(tmp_path: Path) -> tuple[Pki, ServedSaes, ServedSaes]:
    pki = Pki(tmp_path / "pki")
    pki.ensure(kme_ids=["kme-alice", "kme-bob"], sae_ids=["sae-alice", "sae-bob", "sae-carol"])
    a = ServedSaes(PkiSaeRegistry(pki), tmp_path / "a.sqlite", defaults=["sae-alice"])
    b = ServedSaes(PkiSaeRegistry(pki), tmp_path / "b.sqlite", defaults=["sae-bob"])
    return pki, a, b


def test_an_sae_is_served_where_it_calls_and_moves_with_its_calls(tmp_path: Path) -> None:
    pki, a, b = _pair(tmp_path)
    try:
        assert a.knows("sae-alice") and not a.knows("sae-bob") and b.knows("sae-bob")
        assert not a.knows("sae-carol") and not b.knows("sae-carol")
        assert a.is_enrolled("sae-carol")
        assert a.called_by("sae-carol")  # recorded; the peer KME is still to be told
        assert a.knows("sae-carol") and not b.knows("sae-carol")
        a.announced("sae-carol")
        assert not a.called_by("sae-carol")  # told already
        assert b.called_by("sae-carol")  # its profile now names the other KME...
        a.forget("sae-carol")  # ...which tells this one (KmeNode.called_by, POST /served)
        assert b.knows("sae-carol") and not a.knows("sae-carol")
        assert not a.called_by("sae-mallory")  # no certificate: nobody is recorded
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
