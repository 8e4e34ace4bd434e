"""The always-available backend: ML-KEM, ML-DSA and Ed25519 through pyca/cryptography."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature as _CryptographyInvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem

from .errors import InvalidCiphertext, InvalidKey, InvalidSignature
from .interface import (
    Kem,
    KemSizes,
    KeyPair,
    SignatureScheme,
    SignatureSizes,
    check_length,
)
from .recent import MADE

BACKEND = "openssl"

# ML-DSA signs with a context string (FIPS 204 §5.2) so a qsecret signature can
# never be replayed as a signature of another protocol using the same key.
SIGNATURE_CONTEXT = b"qsecret/v1"


@dataclass(frozen=True)
class _MlKemParams:
    private_cls: Any
    public_cls: Any
    sizes: KemSizes


_ML_KEM: dict[str, _MlKemParams] = {
    "ML-KEM-768": _MlKemParams(
        mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey, KemSizes(1184, 64, 1088, 32)
    ),
    "ML-KEM-1024": _MlKemParams(
        mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey, KemSizes(1568, 64, 1568, 32)
    ),
}


class OpenSslMlKem(Kem):
    backend = BACKEND

    def __init__(self, name: str) -> None:
        self.name = name
        self._params = _ML_KEM[name]
        self.sizes = self._params.sizes

    def generate_keypair(self) -> KeyPair:
        private = self._params.private_cls.generate()
        seed = private.private_bytes_raw()
        # Kept a while: a decapsulation with this key (the peer's next ratchet turn) then
        # needs no seed expansion, which costs a key generation.
        MADE.remember(self._params.private_cls, seed, private)
        return KeyPair(private.public_key().public_bytes_raw(), seed)

    def keypair_from_seed(self, seed: bytes) -> KeyPair:
        """Derive the key pair of a 64-byte ``d || z`` seed (FIPS 203 ML-KEM.KeyGen_internal)."""
        private = self._private(seed)
        return KeyPair(private.public_key().public_bytes_raw(), private.private_bytes_raw())

    def encapsulate(self, public_key: bytes) -> tuple[bytes, bytes]:
        check_length(f"{self.name} public key", public_key, self.sizes.public_key, InvalidKey)
        try:
            public = self._params.public_cls.from_public_bytes(public_key)
        except ValueError as exc:
            raise InvalidKey(f"{self.name} public key rejected: {exc}") from None
        shared_secret, ciphertext = public.encapsulate()
        return ciphertext, shared_secret

    def decapsulate(self, secret_key: bytes, ciphertext: bytes) -> bytes:
        check_length(
            f"{self.name} ciphertext", ciphertext, self.sizes.ciphertext, InvalidCiphertext
        )
        return self._private(secret_key).decapsulate(ciphertext)

    def _private(self, seed: bytes) -> Any:
        check_length(f"{self.name} secret key (seed)", seed, self.sizes.secret_key, InvalidKey)
        return _expand(self._params.private_cls, bytes(seed))


# Expanding a seed costs as much as a key generation; a ratchet or an identity
# uses the same few secret keys many times, so keep recent expansions.
@lru_cache(maxsize=256)
def _expand(private_cls: Any, seed: bytes) -> Any:
    made = MADE.take(private_cls, seed)
    if made is not None:
        return made
    if private_cls is ed25519.Ed25519PrivateKey:
        return private_cls.from_private_bytes(seed)
    return private_cls.from_seed_bytes(seed)


@dataclass(frozen=True)
class _SigParams:
    private_cls: Any
    public_cls: Any
    sizes: SignatureSizes
    sign: Callable[[Any, bytes, bytes], bytes]
    verify: Callable[[Any, bytes, bytes, bytes], None]
    from_secret: Callable[[bytes], Any]


def _mldsa(private_cls: Any, public_cls: Any, sizes: SignatureSizes) -> _SigParams:
    return _SigParams(
        private_cls,
        public_cls,
        sizes,
        sign=lambda key, msg, ctx: key.sign(msg, ctx),
        verify=lambda key, sig, msg, ctx: key.verify(sig, msg, ctx),
        from_secret=lambda seed: _expand(private_cls, bytes(seed)),
    )


_SIGNATURES: dict[str, _SigParams] = {
    "ML-DSA-44": _mldsa(mldsa.MLDSA44PrivateKey, mldsa.MLDSA44PublicKey,
                        SignatureSizes(1312, 32, 2420)),
    "ML-DSA-65": _mldsa(mldsa.MLDSA65PrivateKey, mldsa.MLDSA65PublicKey,
                        SignatureSizes(1952, 32, 3309)),
    "ML-DSA-87": _mldsa(mldsa.MLDSA87PrivateKey, mldsa.MLDSA87PublicKey,
                        SignatureSizes(2592, 32, 4627)),
    "Ed25519": _SigParams(
        ed25519.Ed25519PrivateKey,
        ed25519.Ed25519PublicKey,
        SignatureSizes(32, 32, 64),
        sign=lambda key, msg, _ctx: key.sign(msg),
        verify=lambda key, sig, msg, _ctx: key.verify(sig, msg),
        from_secret=lambda key: _expand(ed25519.Ed25519PrivateKey, bytes(key)),
    ),
}


class OpenSslSignature(SignatureScheme):
    """ML-DSA (secret key = 32-byte seed, FIPS 204 context string) or Ed25519."""

    backend = BACKEND

    def __init__(self, name: str, context: bytes = SIGNATURE_CONTEXT) -> None:
        self.name = name
        self._params = _SIGNATURES[name]
        self.sizes = self._params.sizes
        self.context = context

    def keypair_from_seed(self, seed: bytes) -> KeyPair:
        """Derive the key pair of a seed (ML-DSA ``xi``, or an Ed25519 private key)."""
        check_length(f"{self.name} seed", seed, self.sizes.secret_key, InvalidKey)
        private = self._params.from_secret(seed)
        return KeyPair(private.public_key().public_bytes_raw(), private.private_bytes_raw())

    def generate_keypair(self) -> KeyPair:
        private = self._params.private_cls.generate()
        return KeyPair(private.public_key().public_bytes_raw(), private.private_bytes_raw())

    def sign(self, secret_key: bytes, message: bytes) -> bytes:
        check_length(f"{self.name} secret key", secret_key, self.sizes.secret_key, InvalidKey)
        return self._params.sign(self._params.from_secret(secret_key), message, self.context)

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        check_length(f"{self.name} public key", public_key, self.sizes.public_key, InvalidKey)
        if len(signature) != self.sizes.signature:
            raise InvalidSignature(
                f"{self.name} signature must be {self.sizes.signature} bytes, got {len(signature)}"
            )
        try:
            public = self._params.public_cls.from_public_bytes(public_key)
        except ValueError as exc:
            raise InvalidKey(f"{self.name} public key rejected: {exc}") from None
        try:
            self._params.verify(public, signature, message, self.context)
        except _CryptographyInvalidSignature:
            raise InvalidSignature(f"{self.name} signature does not verify") from None


def kem_names() -> list[str]:
    return list(_ML_KEM)


def signature_names() -> list[str]:
    return list(_SIGNATURES)
