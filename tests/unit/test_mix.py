"""The combiner: every input, the transcript and the purpose change the key; policy holds."""

from __future__ import annotations

import os

import pytest

from keysource.mix import (
    MixError,
    MixInputs,
    QkdPolicy,
    QkdRequired,
    Transcript,
    length_prefixed,
    mix,
)

FULL = MixInputs(qkd=b"q" * 32, pq=b"p" * 32, ecdh=b"e" * 32)


def derive(inputs: MixInputs = FULL, transcript: bytes = b"t", purpose: str = "test") -> bytes:
    return mix(inputs, transcript=transcript, purpose=purpose).key


def test_deterministic_and_sized() -> None:
    assert derive() == derive()
    assert len(mix(FULL, transcript=b"t", purpose="x", length=64).key) == 64


@pytest.mark.parametrize("field", ["qkd", "pq", "pq2", "ecdh"])
def test_each_input_changes_the_output(field: str) -> None:
    base = MixInputs(qkd=b"q" * 32, pq=b"p" * 32, pq2=b"r" * 32, ecdh=b"e" * 32)
    changed = MixInputs(**{**base.__dict__, field: os.urandom(32)})
    assert derive(base) != derive(changed)


def test_transcript_and_purpose_change_the_output() -> None:
    assert derive(transcript=b"t1") != derive(transcript=b"t2")
    assert derive(purpose="root") != derive(purpose="chain")


@pytest.mark.parametrize("field", ["qkd", "pq", "pq2", "ecdh"])
def test_absent_input_differs_from_empty_one(field: str) -> None:
    absent = MixInputs(**{**FULL.__dict__, field: None})
    empty = MixInputs(**{**FULL.__dict__, field: b""})
    assert derive(absent) != derive(empty)


def test_inputs_cannot_slide_between_slots() -> None:
    # Same concatenated bytes, different split: length prefixes keep them apart.
    a = MixInputs(qkd=b"ab", pq=b"c", ecdh=b"e")
    b = MixInputs(qkd=b"a", pq=b"bc", ecdh=b"e")
    assert derive(a) != derive(b)


def test_sources_recorded_and_labelled() -> None:
    full = mix(FULL, transcript=b"t", purpose="p")
    assert full.sources == ("QKD", "ML-KEM-768", "X25519")
    assert full.label == "QKD+ML-KEM-768+X25519"
    assert not full.degraded
    degraded = mix(MixInputs(pq=b"p", ecdh=b"e"), transcript=b"t", purpose="p")
    assert degraded.degraded
    assert degraded.label == "ML-KEM-768+X25519 (degraded: no QKD)"
    two_pq = mix(
        MixInputs(qkd=b"q", pq=b"p", pq2=b"f", pq2_alg="FrodoKEM-976-AES", ecdh=b"e"),
        transcript=b"t",
        purpose="p",
    )
    assert two_pq.label == "QKD+ML-KEM-768+FrodoKEM-976-AES+X25519"


def test_key_not_in_repr() -> None:
    key = mix(FULL, transcript=b"t", purpose="p")
    assert key.key.hex() not in repr(key)


def test_require_refuses_without_qkd() -> None:
    inputs = MixInputs(pq=b"p" * 32, ecdh=b"e" * 32)
    with pytest.raises(QkdRequired, match="policy is 'require'"):
        mix(inputs, transcript=b"t", purpose="p", policy=QkdPolicy.REQUIRE)
    # with QKD present, require is satisfied and equals prefer
    assert mix(FULL, transcript=b"t", purpose="p", policy=QkdPolicy.REQUIRE).key == derive(
        purpose="p"
    )


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(MixError, match="every source is absent"):
        mix(MixInputs(), transcript=b"t", purpose="p")
    with pytest.raises(MixError, match="purpose"):
        mix(FULL, transcript=b"t", purpose="")
    with pytest.raises(MixError, match="output length"):
        mix(FULL, transcript=b"t", purpose="p", length=0)
    with pytest.raises(MixError, match="exceeds"):
        length_prefixed(b"x" * 70000)
    with pytest.raises(MixError, match="unknown QKD policy"):
        QkdPolicy.parse("maybe")


def test_matches_the_documented_construction() -> None:
    """Recompute the docs/protocol.md formula independently, so the wire format is deliberate."""
    import hashlib
    import hmac

    ikm = bytes([0b1011]) + b"".join(
        len(x).to_bytes(2, "big") + x for x in (b"q" * 32, b"p" * 32, b"", b"e" * 32)
    )
    prk = hmac.new(hashlib.sha512(b"t").digest(), ikm, "sha512").digest()
    okm = hmac.new(prk, b"qsecret/v1/test" + b"\x01", "sha512").digest()[:32]
    assert derive() == okm


def test_transcript_is_unambiguous() -> None:
    one = Transcript("x").add("a", b"bc").to_bytes()
    two = Transcript("x").add("a", b"b").add("c", b"").to_bytes()
    assert one != two
    assert Transcript("x").add("k", b"1").to_bytes() != Transcript("y").add("k", b"1").to_bytes()
    with pytest.raises(MixError):
        Transcript("x").add("", b"")
