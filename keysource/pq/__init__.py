"""Post-quantum and classical primitives behind one interface, two backends.

``openssl`` (pyca/cryptography) is always there; ``liboqs`` (liboqs-python) is
used when its shared library is installed and is never downloaded or built.
"""

from .classical import (
    aes256gcm,
    chacha20poly1305,
    hkdf_sha256,
    hkdf_sha512,
    x25519_ephemeral,
    x25519_keypair,
    x25519_public,
    x25519_shared,
)
from .errors import (
    BackendUnavailable,
    InvalidCiphertext,
    InvalidKey,
    InvalidSignature,
    PqError,
    UnknownAlgorithm,
)
from .hybrid import HybridSignature, hybrid_signature
from .interface import Kem, KemSizes, KeyPair, SignatureScheme, SignatureSizes
from .registry import (
    BACKENDS,
    BackendStatus,
    available_kems,
    available_signatures,
    backend_status,
    forget_backends,
    get_kem,
    get_signature,
)

__all__ = [
    "BACKENDS",
    "BackendStatus",
    "BackendUnavailable",
    "HybridSignature",
    "InvalidCiphertext",
    "InvalidKey",
    "InvalidSignature",
    "Kem",
    "KemSizes",
    "KeyPair",
    "PqError",
    "SignatureScheme",
    "SignatureSizes",
    "UnknownAlgorithm",
    "aes256gcm",
    "available_kems",
    "available_signatures",
    "backend_status",
    "forget_backends",
    "chacha20poly1305",
    "get_kem",
    "get_signature",
    "hkdf_sha256",
    "hkdf_sha512",
    "hybrid_signature",
    "x25519_ephemeral",
    "x25519_keypair",
    "x25519_public",
    "x25519_shared",
]
