"""Backend behaviour: round trips, sizes, clear errors, and openssl <-> liboqs interop."""

from __future__ import annotations

import pytest

from keysource import pq
from keysource.pq import (
    InvalidCiphertext,
    InvalidKey,
    InvalidSignature,
    UnknownAlgorithm,
    get_kem,
    get_signature,
)
from tests.conftest import require_liboqs


@pytest.mark.parametrize("alg", ["ML-KEM-768", "ML-KEM-1024"])
def test_openssl_kem_round_trip_and_sizes(alg: str) -> None:
    kem = get_kem(alg, "openssl")
    keypair = kem.generate_keypair()
    assert len(keypair.public_key) == kem.sizes.public_key
    assert len(keypair.secret_key) == kem.sizes.secret_key == 64
    ciphertext, secret = kem.encapsulate(keypair.public_key)
    assert len(ciphertext) == kem.sizes.ciphertext
    assert kem.decapsulate(keypair.secret_key, ciphertext) == secret
    other = kem.generate_keypair()
    # Implicit rejection: the wrong key yields an unrelated secret, never the right one.
    assert kem.decapsulate(other.secret_key, ciphertext) != secret


def test_kem_rejects_bad_sizes_with_clear_errors() -> None:
    kem = get_kem("ML-KEM-768", "openssl")
    keypair = kem.generate_keypair()
    with pytest.raises(InvalidKey, match="public key must be 1184 bytes, got 10"):
        kem.encapsulate(b"x" * 10)
    ciphertext, _ = kem.encapsulate(keypair.public_key)
    with pytest.raises(InvalidCiphertext, match="1088 bytes, got 1087"):
        kem.decapsulate(keypair.secret_key, ciphertext[:-1])
    with pytest.raises(InvalidKey, match="secret key"):
        kem.decapsulate(keypair.secret_key[:-1], ciphertext)


@pytest.mark.parametrize("alg", ["ML-DSA-44", "ML-DSA-65", "ML-DSA-87", "Ed25519"])
def test_openssl_signatures(alg: str) -> None:
    scheme = get_signature(alg, "openssl")
    keypair = scheme.generate_keypair()
    signature = scheme.sign(keypair.secret_key, b"hello")
    assert len(signature) == scheme.sizes.signature
    scheme.verify(keypair.public_key, b"hello", signature)
    with pytest.raises(InvalidSignature):
        scheme.verify(keypair.public_key, b"hellO", signature)
    with pytest.raises(InvalidSignature, match="must be"):
        scheme.verify(keypair.public_key, b"hello", signature[:-1])


def test_unknown_algorithm_names_the_reason() -> None:
    with pytest.raises(UnknownAlgorithm, match="NoSuchKEM"):
        get_kem("NoSuchKEM")
    with pytest.raises(UnknownAlgorithm, match="unknown backend"):
        get_kem("ML-KEM-768", "nope")


def test_registry_lists_openssl_algorithms() -> None:
    kems = pq.available_kems()
    assert "openssl" in kems["ML-KEM-768"]
    assert "openssl" in pq.available_signatures()["ML-DSA-65"]


def test_x25519_agreement_and_low_order_rejection() -> None:
    alice, bob = pq.x25519_keypair(), pq.x25519_keypair()
    assert pq.x25519_shared(alice.secret_key, bob.public_key) == pq.x25519_shared(
        bob.secret_key, alice.public_key
    )
    assert pq.x25519_public(alice.secret_key) == alice.public_key
    with pytest.raises(InvalidKey, match="rejected"):
        pq.x25519_shared(alice.secret_key, bytes(32))  # the all-zero point is low order
    with pytest.raises(InvalidKey, match="32 bytes"):
        pq.x25519_shared(alice.secret_key, b"short")


# --- liboqs ------------------------------------------------------------------------------


@pytest.mark.liboqs
@pytest.mark.parametrize("alg", ["ML-KEM-768", "ML-KEM-1024"])
@pytest.mark.parametrize("direction", ["openssl->liboqs", "liboqs->openssl"])
def test_ml_kem_interop_between_backends(alg: str, direction: str) -> None:
    require_liboqs()
    keygen_side, encaps_side = direction.split("->")
    holder, sender = get_kem(alg, keygen_side), get_kem(alg, encaps_side)
    for _ in range(20):
        keypair = holder.generate_keypair()
        ciphertext, secret = sender.encapsulate(keypair.public_key)
        assert holder.decapsulate(keypair.secret_key, ciphertext) == secret
        # Secret keys (64-byte seeds) are portable too: decapsulate on the other backend.
        assert sender.decapsulate(keypair.secret_key, ciphertext) == secret


@pytest.mark.liboqs
def test_liboqs_is_preferred_for_ml_kem_when_loaded() -> None:
    require_liboqs()
    assert get_kem("ML-KEM-768").backend == "liboqs"
    assert pq.available_kems()["ML-KEM-768"] == ["liboqs", "openssl"]
    assert get_signature("ML-DSA-65").backend == "openssl"


@pytest.mark.liboqs
@pytest.mark.parametrize("alg", ["FrodoKEM-976-AES", "Classic-McEliece-348864"])
def test_liboqs_only_kems_round_trip(alg: str) -> None:
    require_liboqs()
    kem = get_kem(alg)
    assert kem.backend == "liboqs"
    keypair = kem.generate_keypair()
    ciphertext, secret = kem.encapsulate(keypair.public_key)
    assert kem.decapsulate(keypair.secret_key, ciphertext) == secret


@pytest.mark.liboqs
def test_ml_dsa_interop_between_backends() -> None:
    require_liboqs()
    ossl, oqs = get_signature("ML-DSA-65", "openssl"), get_signature("ML-DSA-65", "liboqs")
    keypair = oqs.generate_keypair()
    ossl.verify(keypair.public_key, b"m", oqs.sign(keypair.secret_key, b"m"))
    with pytest.raises(InvalidSignature):
        ossl.verify(keypair.public_key, b"n", oqs.sign(keypair.secret_key, b"m"))
    keypair = ossl.generate_keypair()
    oqs.verify(keypair.public_key, b"m", ossl.sign(keypair.secret_key, b"m"))
    with pytest.raises(InvalidSignature):
        oqs.verify(keypair.public_key, b"n", ossl.sign(keypair.secret_key, b"m"))


@pytest.mark.liboqs
def test_hybrid_signature_verifies_ml_dsa_through_liboqs() -> None:
    require_liboqs()
    scheme = pq.hybrid_signature()
    assert scheme.post_quantum_verifier is not None
    assert scheme.post_quantum_verifier.backend == "liboqs"
    keypair = scheme.generate_keypair()
    signature = bytearray(scheme.sign(keypair.secret_key, b"m"))
    scheme.verify(keypair.public_key, b"m", bytes(signature))
    signature[100] ^= 1
    with pytest.raises(InvalidSignature, match="ML-DSA-65 invalid"):
        scheme.verify(keypair.public_key, b"m", bytes(signature))


def test_loading_liboqs_adds_no_line_to_a_program_s_info_log(liboqs: None) -> None:
    """liboqs-python logs an INFO line about its faulthandler at import (through its own
    stdout handler and the root logger); a relay or KME logging at INFO would show it."""
    import subprocess
    import sys

    code = ("import logging; logging.basicConfig(level=logging.INFO); "
            "from keysource.pq.liboqs_backend import load_oqs; load_oqs(); "
            "logging.getLogger('oqs.oqs').warning('still heard')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert "faulthandler" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert "still heard" in out.stderr  # its warnings still reach the log
