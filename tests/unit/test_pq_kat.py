"""ML-KEM and ML-DSA against NIST known-answer vectors (cryptography-vectors), per backend."""

from __future__ import annotations

import pytest

from keysource.pq import InvalidSignature, get_kem
from keysource.pq.openssl_backend import OpenSslSignature
from tests.conftest import require_liboqs
from tests.kat import read_rsp

ML_KEM_FILES = {
    "ML-KEM-768": "asymmetric/MLKEM/kat_MLKEM_768.rsp",
    "ML-KEM-1024": "asymmetric/MLKEM/kat_MLKEM_1024.rsp",
}


def _kem_vectors(alg: str, limit: int | None = None) -> list[dict[str, str]]:
    vectors = list(read_rsp(ML_KEM_FILES[alg]))
    assert len(vectors) >= 100, "the KAT file should hold many vectors"
    return vectors[:limit] if limit else vectors


def _check_kem_kat(alg: str, backend: str, limit: int | None) -> None:
    kem = get_kem(alg, backend)
    for vector in _kem_vectors(alg, limit):
        seed = bytes.fromhex(vector["d"] + vector["z"])
        keypair = kem.keypair_from_seed(seed)  # type: ignore[attr-defined]
        assert keypair.public_key.hex() == vector["pk"], f"count {vector['count']}: pk"
        assert kem.decapsulate(keypair.secret_key, bytes.fromhex(vector["ct"])).hex() == vector[
            "ss"
        ], f"count {vector['count']}: ss"
        # The invalid ciphertext must give the implicit-rejection secret, not an error.
        assert kem.decapsulate(keypair.secret_key, bytes.fromhex(vector["ct_n"])).hex() == vector[
            "ss_n"
        ], f"count {vector['count']}: implicit rejection"


@pytest.mark.parametrize("alg", sorted(ML_KEM_FILES))
def test_ml_kem_kat_openssl(alg: str) -> None:
    _check_kem_kat(alg, "openssl", None)


@pytest.mark.liboqs
@pytest.mark.parametrize("alg", sorted(ML_KEM_FILES))
def test_ml_kem_kat_liboqs(alg: str) -> None:
    require_liboqs()
    _check_kem_kat(alg, "liboqs", 200)


def _mldsa_vectors() -> list[dict[str, str]]:
    vectors = list(read_rsp("asymmetric/MLDSA/kat_MLDSA_65_det_pure.rsp"))
    assert len(vectors) >= 50
    return vectors


def test_ml_dsa_65_kat_openssl() -> None:
    for vector in _mldsa_vectors():
        scheme = OpenSslSignature("ML-DSA-65", context=bytes.fromhex(vector["ctx"]))
        keypair = scheme.keypair_from_seed(bytes.fromhex(vector["xi"]))
        assert keypair.public_key.hex() == vector["pk"], f"count {vector['count']}: pk"
        message = bytes.fromhex(vector["msg"])
        signed = bytes.fromhex(vector["sm"])
        signature = signed[: len(signed) - len(message)]
        assert signed[len(signature):] == message
        scheme.verify(keypair.public_key, message, signature)
        # Our own signature from the same key must verify too, and a flipped bit must not.
        ours = scheme.sign(keypair.secret_key, message)
        scheme.verify(keypair.public_key, message, ours)
        tampered = bytearray(signature)
        tampered[len(tampered) // 2] ^= 1
        with pytest.raises(InvalidSignature):
            scheme.verify(keypair.public_key, message, bytes(tampered))


@pytest.mark.liboqs
def test_ml_dsa_65_kat_verifies_on_liboqs() -> None:
    require_liboqs()
    from keysource.pq.liboqs_backend import LiboqsSignature

    for vector in _mldsa_vectors()[:30]:
        scheme = LiboqsSignature("ML-DSA-65", context=bytes.fromhex(vector["ctx"]))
        message = bytes.fromhex(vector["msg"])
        signed = bytes.fromhex(vector["sm"])
        scheme.verify(bytes.fromhex(vector["pk"]), message, signed[: len(signed) - len(message)])
