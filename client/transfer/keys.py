"""Per-file keys: mixed from the session's transfer secret and fresh QKD material.

For file ``i`` of a manifest::

    K_i || P_i = mix(MixInputs(qkd=fresh QKD bytes or None, pq=session transfer secret),
                     transcript = Transcript("qsecret/transfer/v1")
                                    .add("manifest-sha256", SHA-256(encoded manifest))
                                    .add("file-index", u32 i),
                     purpose = "transfer/file", length = 32 + 7)

``K_i`` is the AES-256-GCM key, ``P_i`` the 7-byte STREAM nonce prefix. The session secret is
what the protocol layer exports for this transfer (itself mixed from ML-KEM, X25519 and QKD in
the ratchet); it occupies the combiner's first PQ slot, labelled ``session``. The manifest --
names, sizes, hashes, chunk size, transfer ID and the QKD key_IDs -- is in the transcript, so a
key only opens chunks of the exact manifest both sides agreed on. Two further keys, one per
direction, seal the small control messages (acks, resume points, cancel) that ride beside the
chunks.

No key material is ever written to the progress files: a restarted side derives the keys again
from the secrets its sealed store kept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from keysource.mix import MixedKey, MixInputs, QkdPolicy, Transcript, mix

from .errors import TransferError
from .manifest import Manifest

TRANSCRIPT_CONTEXT = "qsecret/transfer/v1"
KEY_BYTES = 32
NONCE_PREFIX_BYTES = 7
MIN_SESSION_SECRET_BYTES = 32
SENDER_TO_RECEIVER = "s2r"
RECEIVER_TO_SENDER = "r2s"


@dataclass(frozen=True, repr=False)
class FileKey:
    """The AEAD key and STREAM nonce prefix of one file."""

    key: bytes
    nonce_prefix: bytes

    def __repr__(self) -> str:  # never print key material
        return "FileKey(<secret>)"


class TransferKeys:
    """All keys of one transfer, derived on demand from the secrets and the manifest."""

    def __init__(
        self,
        manifest: Manifest,
        session_secret: bytes,
        qkd: bytes | None,
        *,
        policy: QkdPolicy = QkdPolicy.PREFER,
    ) -> None:
        if len(session_secret) < MIN_SESSION_SECRET_BYTES:
            raise TransferError(
                f"session transfer secret must be at least {MIN_SESSION_SECRET_BYTES} bytes"
            )
        if qkd is not None and not manifest.qkd_key_ids:
            raise TransferError("QKD material given but the manifest names no QKD key_IDs")
        if qkd is None and manifest.qkd_key_ids:
            raise TransferError(
                "the manifest names QKD key_IDs but no QKD material was given: fetch them "
                "from the KME (dec_keys) before deriving the file keys"
            )
        self.manifest = manifest
        self.manifest_digest = manifest.digest()
        self._inputs = MixInputs(qkd=qkd, pq=session_secret, pq_alg="session")
        self._policy = policy
        # Fails early (QkdRequired) under policy "require" without QKD material.
        self._probe: MixedKey = self._mix("transfer/control/" + SENDER_TO_RECEIVER, None)
        self._control = {
            SENDER_TO_RECEIVER: self._probe.key,
            RECEIVER_TO_SENDER: self._mix("transfer/control/" + RECEIVER_TO_SENDER, None).key,
        }
        self._files: dict[int, FileKey] = {}

    def _mix(self, purpose: str, file_index: int | None, length: int = KEY_BYTES) -> MixedKey:
        transcript = Transcript(TRANSCRIPT_CONTEXT).add("manifest-sha256", self.manifest_digest)
        if file_index is not None:
            transcript.add("file-index", struct.pack(">I", file_index))
        return mix(self._inputs, transcript=transcript.to_bytes(), purpose=purpose,
                   length=length, policy=self._policy)

    @property
    def sources(self) -> tuple[str, ...]:
        """What fed the keys, e.g. ``("QKD", "session")``."""
        return self._probe.sources

    @property
    def degraded(self) -> bool:
        """True when no fresh QKD material went in (policy prefer)."""
        return self._probe.degraded

    def file_key(self, file_index: int) -> FileKey:
        if not 0 <= file_index < len(self.manifest.files):
            raise TransferError(f"no file #{file_index} in this transfer")
        cached = self._files.get(file_index)
        if cached is None:
            out = self._mix("transfer/file", file_index, KEY_BYTES + NONCE_PREFIX_BYTES).key
            cached = FileKey(out[:KEY_BYTES], out[KEY_BYTES:])
            self._files[file_index] = cached
        return cached

    def control_key(self, direction: str) -> bytes:
        return self._control[direction]

    def __repr__(self) -> str:
        return f"TransferKeys(sources={self.sources!r}, degraded={self.degraded})"
