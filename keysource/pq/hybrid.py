"""The hybrid identity signature: Ed25519 and ML-DSA-65 together, both must verify.

A forger has to break both a classical and a post-quantum scheme. Keys and
signatures are the plain concatenation of the two fixed-size halves.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidKey, InvalidSignature
from .interface import KeyPair, SignatureScheme, check_length
from .registry import backend_status, get_signature

CLASSICAL = "Ed25519"
POST_QUANTUM = "ML-DSA-65"
# Binds both halves to this construction, so neither can be lifted into a
# single-scheme signature elsewhere.
DOMAIN = b"qsecret/v1/hybrid-signature\x00"


@dataclass(frozen=True)
class HybridSignature:
    classical: SignatureScheme
    post_quantum: SignatureScheme
    # Verification needs only the public key, so it may use a faster backend than
    # signing (liboqs verifies ML-DSA several times faster than OpenSSL here).
    post_quantum_verifier: SignatureScheme | None = None

    @property
    def public_key_size(self) -> int:
        return self.classical.sizes.public_key + self.post_quantum.sizes.public_key

    @property
    def secret_key_size(self) -> int:
        return self.classical.sizes.secret_key + self.post_quantum.sizes.secret_key

    @property
    def signature_size(self) -> int:
        return self.classical.sizes.signature + self.post_quantum.sizes.signature

    def generate_keypair(self) -> KeyPair:
        c, q = self.classical.generate_keypair(), self.post_quantum.generate_keypair()
        return KeyPair(c.public_key + q.public_key, c.secret_key + q.secret_key)

    def sign(self, secret_key: bytes, message: bytes) -> bytes:
        check_length("hybrid secret key", secret_key, self.secret_key_size, InvalidKey)
        split = self.classical.sizes.secret_key
        data = DOMAIN + message
        return self.classical.sign(secret_key[:split], data) + self.post_quantum.sign(
            secret_key[split:], data
        )

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        """Return if both halves verify; raise :class:`InvalidSignature` naming the bad half."""
        check_length("hybrid public key", public_key, self.public_key_size, InvalidKey)
        if len(signature) != self.signature_size:
            raise InvalidSignature(
                f"hybrid signature must be {self.signature_size} bytes, got {len(signature)}"
            )
        pk_split, sig_split = self.classical.sizes.public_key, self.classical.sizes.signature
        data = DOMAIN + message
        failures = []
        for scheme, pk, sig in (
            (self.classical, public_key[:pk_split], signature[:sig_split]),
            (
                self.post_quantum_verifier or self.post_quantum,
                public_key[pk_split:],
                signature[sig_split:],
            ),
        ):
            try:
                scheme.verify(pk, data, sig)
            except (InvalidSignature, InvalidKey):
                failures.append(scheme.name)
        if failures:
            raise InvalidSignature(f"hybrid signature rejected: {' and '.join(failures)} invalid")


def hybrid_signature() -> HybridSignature:
    """Ed25519 + ML-DSA-65; signs through openssl (secret keys are its seeds), verifies
    ML-DSA through liboqs when it is loaded."""
    verifier = (
        get_signature(POST_QUANTUM, "liboqs") if backend_status("liboqs").available else None
    )
    return HybridSignature(
        get_signature(CLASSICAL, "openssl"), get_signature(POST_QUANTUM, "openssl"), verifier
    )
