"""The hybrid identity signature must fail if either half is wrong."""

from __future__ import annotations

import pytest

from keysource.pq import InvalidSignature, hybrid_signature


@pytest.fixture(scope="module")
def scheme():  # type: ignore[no-untyped-def]
    return hybrid_signature()


def test_round_trip(scheme) -> None:  # type: ignore[no-untyped-def]
    keypair = scheme.generate_keypair()
    signature = scheme.sign(keypair.secret_key, b"register alice")
    assert len(signature) == 64 + 3309
    scheme.verify(keypair.public_key, b"register alice", signature)


@pytest.mark.parametrize("half", ["Ed25519", "ML-DSA-65"])
def test_either_half_wrong_fails(scheme, half: str) -> None:  # type: ignore[no-untyped-def]
    keypair = scheme.generate_keypair()
    other = scheme.generate_keypair()
    message = b"nonce"
    good = scheme.sign(keypair.secret_key, message)
    forged = scheme.sign(other.secret_key, message)
    split = 64
    if half == "Ed25519":  # a valid ML-DSA half with a foreign Ed25519 half
        mixed = forged[:split] + good[split:]
    else:
        mixed = good[:split] + forged[split:]
    with pytest.raises(InvalidSignature, match=f"{half} invalid"):
        scheme.verify(keypair.public_key, message, mixed)


@pytest.mark.parametrize("position", [0, 63, 64, 2000, 64 + 3308])
def test_any_flipped_byte_fails(scheme, position: int) -> None:  # type: ignore[no-untyped-def]
    keypair = scheme.generate_keypair()
    signature = bytearray(scheme.sign(keypair.secret_key, b"m"))
    signature[position] ^= 0x01
    with pytest.raises(InvalidSignature):
        scheme.verify(keypair.public_key, b"m", bytes(signature))


def test_halves_do_not_verify_as_plain_signatures(scheme) -> None:  # type: ignore[no-untyped-def]
    keypair = scheme.generate_keypair()
    signature = scheme.sign(keypair.secret_key, b"m")
    # The Ed25519 half signs a domain-separated message, not the bare one.
    with pytest.raises(InvalidSignature):
        scheme.classical.verify(keypair.public_key[:32], b"m", signature[:64])


def test_wrong_length_is_rejected(scheme) -> None:  # type: ignore[no-untyped-def]
    keypair = scheme.generate_keypair()
    with pytest.raises(InvalidSignature, match="must be"):
        scheme.verify(keypair.public_key, b"m", b"\x00" * 10)
