"""Sender keys: one symmetric chain per group member, as in Signal's groups (sans-I/O).

Each member has, per group, a chain of its own:

    mk_i = HMAC-SHA256(ck_i, 0x01)      message key of message i
    ck_i+1 = HMAC-SHA256(ck_i, 0x02)    the chain moves on; ck_i is erased
    key || nonce = HKDF-SHA256(mk_i, salt none, info "qsecret/v1/group/message", 44)

and an Ed25519 signing key for the chain: every group message is AES-256-GCM under
(key, nonce) with its header as associated data, then signed, so a member who holds the
chain key (every member does) still cannot forge another member's messages. The chain key
and the signing public key reach each member in a :class:`SenderKeyRecord` through the
pairwise session, so they ride on ``QKD+ML-KEM-768+X25519`` keys (or the one-time pad).

A *generation* numbers a member's successive sender keys in a group. A new generation is
made after any removal (a removed member holds only old ones, which the others retire) and
on a schedule (:data:`ROTATE_AFTER_MESSAGES`, :data:`ROTATE_AFTER_SECONDS`), so fresh key
material from the pairwise sessions keeps entering.

Group message (big-endian)::

    u8 version (1) | 16 group ID | s8 sender handle | u32 generation | u32 iteration
    | b32 AES-256-GCM ciphertext||tag | 64 Ed25519 signature over everything before it
"""

from __future__ import annotations

import hmac
import os
import time
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag

from client.protocol.codec import Reader, Writer
from client.protocol.errors import (
    BadSignature,
    DecryptionFailed,
    MalformedMessage,
    ReplayedMessage,
    TooManySkipped,
    UnsupportedVersion,
)
from keysource import pq
from keysource.pq import aes256gcm, hkdf_sha256

GROUP_MESSAGE_VERSION = 1
SENDER_KEY_VERSION = 1
GROUP_ID_BYTES = 16
CHAIN_KEY_BYTES = 32
SIGNATURE_BYTES = 64
ED25519_PUBLIC_BYTES = 32
MESSAGE_INFO = b"qsecret/v1/group/message"
# A receiver computes at most this many message keys ahead in one chain (lost or delayed
# messages) and keeps at most this many skipped keys per chain: a hostile sender naming
# iteration 2^32 - 1 costs nothing.
MAX_SKIP = 2000
# The schedule of new sender keys (issue: every 1,000 messages or 7 days).
ROTATE_AFTER_MESSAGES = 1000
ROTATE_AFTER_SECONDS = 7 * 24 * 3600

_MK = b"\x01"
_CK = b"\x02"


def _ed25519() -> pq.SignatureScheme:
    return pq.get_signature("Ed25519", "openssl")


def _step(chain_key: bytes) -> tuple[bytes, bytes]:
    """(message key, next chain key)."""
    return hmac.digest(chain_key, _MK, "sha256"), hmac.digest(chain_key, _CK, "sha256")


def chain_key_at(chain_key: bytes, steps: int) -> bytes:
    """The chain key ``steps`` messages further on (to give a member a chain from there)."""
    for _ in range(steps):
        chain_key = _step(chain_key)[1]
    return chain_key


def _seal_key(message_key: bytes) -> tuple[bytes, bytes]:
    out = hkdf_sha256(message_key, salt=None, info=MESSAGE_INFO, length=44)
    return out[:32], out[32:]


@dataclass(frozen=True, repr=False)
class SenderKeyRecord:
    """What a member sends each other member (through the pairwise session) so they can read
    its group messages from ``iteration`` on: the chain key there and the signing key."""

    group_id: bytes
    sender: str
    generation: int
    iteration: int
    chain_key: bytes
    signing_public: bytes

    def encode(self) -> bytes:
        return (Writer().u8(SENDER_KEY_VERSION).raw(self.group_id).s8(self.sender)
                .u32(self.generation).u32(self.iteration).raw(self.chain_key)
                .raw(self.signing_public).getvalue())

    @classmethod
    def decode(cls, data: bytes) -> SenderKeyRecord:
        reader = Reader(data, "sender key")
        version = reader.u8()
        if version != SENDER_KEY_VERSION:
            raise UnsupportedVersion(f"sender key version {version} is not supported")
        record = cls(reader.raw(GROUP_ID_BYTES), reader.s8(), reader.u32(), reader.u32(),
                     reader.raw(CHAIN_KEY_BYTES), reader.raw(ED25519_PUBLIC_BYTES))
        reader.done()
        if not record.sender:
            raise MalformedMessage("sender key without a sender")
        return record

    def __repr__(self) -> str:  # never print the chain key
        return (f"SenderKeyRecord(sender={self.sender!r}, generation={self.generation}, "
                f"iteration={self.iteration})")


@dataclass(frozen=True)
class GroupHeader:
    group_id: bytes
    sender: str
    generation: int
    iteration: int


def parse_group_message(wire: bytes) -> tuple[GroupHeader, bytes, bytes, bytes, bytes]:
    """(header, signed part, header bytes (the AEAD's associated data), ciphertext,
    signature) of a group message; nothing verified yet."""
    reader = Reader(wire, "group message")
    version = reader.u8()
    if version != GROUP_MESSAGE_VERSION:
        raise UnsupportedVersion(f"group message version {version} is not supported")
    header = GroupHeader(reader.raw(GROUP_ID_BYTES), reader.s8(), reader.u32(), reader.u32())
    aad_end = reader.position
    ciphertext = reader.b32()
    signed_end = reader.position
    signature = reader.raw(SIGNATURE_BYTES)
    reader.done()
    return header, wire[:signed_end], wire[:aad_end], ciphertext, signature


@dataclass(repr=False)
class OwnSenderKey:
    """This member's chain in one group (mutable: persist :meth:`to_dict` after each use)."""

    group_id: bytes
    sender: str
    generation: int
    chain_key: bytes
    signing_secret: bytes
    signing_public: bytes
    iteration: int = 0
    created_at: float = field(default_factory=time.time)

    @classmethod
    def new(cls, group_id: bytes, sender: str, generation: int,
            now: float | None = None) -> OwnSenderKey:
        keypair = _ed25519().generate_keypair()
        return cls(group_id, sender, generation, os.urandom(CHAIN_KEY_BYTES),
                   keypair.secret_key, keypair.public_key,
                   created_at=time.time() if now is None else now)

    def record(self) -> SenderKeyRecord:
        """The distribution for a member: readable from the current iteration on."""
        return SenderKeyRecord(self.group_id, self.sender, self.generation, self.iteration,
                               self.chain_key, self.signing_public)

    def due_for_rotation(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return (self.iteration >= ROTATE_AFTER_MESSAGES
                or now - self.created_at >= ROTATE_AFTER_SECONDS)

    def encrypt(self, plaintext: bytes) -> bytes:
        """One group message; the chain moves on (its old key is gone)."""
        if self.iteration >= 2**32 - 1:
            raise ReplayedMessage("this sender key is used up: make a new generation")
        message_key, self.chain_key = _step(self.chain_key)
        head = (Writer().u8(GROUP_MESSAGE_VERSION).raw(self.group_id).s8(self.sender)
                .u32(self.generation).u32(self.iteration).getvalue())
        self.iteration += 1
        key, nonce = _seal_key(message_key)
        body = Writer().raw(head).b32(aes256gcm(key).encrypt(nonce, plaintext, head)).getvalue()
        return body + _ed25519().sign(self.signing_secret, body)

    def to_dict(self) -> dict[str, object]:
        return {"group": self.group_id, "sender": self.sender, "generation": self.generation,
                "chain": self.chain_key, "secret": self.signing_secret,
                "public": self.signing_public, "iteration": self.iteration,
                "created": self.created_at}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> OwnSenderKey:
        return cls(data["group"], data["sender"], data["generation"],  # type: ignore[arg-type]
                   data["chain"], data["secret"], data["public"],  # type: ignore[arg-type]
                   data["iteration"], data["created"])  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"OwnSenderKey(generation={self.generation}, iteration={self.iteration})"


@dataclass(repr=False)
class PeerSenderKey:
    """Another member's chain, as far as it has been read (mutable; see ``to_dict``)."""

    group_id: bytes
    sender: str
    generation: int
    chain_key: bytes
    iteration: int  # the next iteration the chain key opens
    signing_public: bytes
    skipped: dict[int, bytes] = field(default_factory=dict)  # iteration -> message key

    @classmethod
    def from_record(cls, record: SenderKeyRecord) -> PeerSenderKey:
        return cls(record.group_id, record.sender, record.generation, record.chain_key,
                   record.iteration, record.signing_public)

    def verify(self, signed: bytes, signature: bytes) -> None:
        try:
            _ed25519().verify(self.signing_public, signed, signature)
        except (pq.InvalidSignature, pq.InvalidKey):
            raise BadSignature(f"group message signature from {self.sender!r} does not "
                               "verify: forged or damaged") from None

    def decrypt(self, wire: bytes) -> bytes:
        """Verify, then open; the state changes only when both succeed."""
        header, signed, aad, ciphertext, signature = parse_group_message(wire)
        if (header.group_id, header.sender, header.generation) != (
                self.group_id, self.sender, self.generation):
            raise MalformedMessage("group message for another group, sender or generation")
        self.verify(signed, signature)
        n = header.iteration
        if n < self.iteration:
            message_key = self.skipped.get(n)
            if message_key is None:
                raise ReplayedMessage(f"group message {n} from {self.sender!r} was already "
                                      "read (or is older than this member's copy of the key)")
            plaintext = self._open(message_key, aad, ciphertext)
            del self.skipped[n]
            return plaintext
        if n - self.iteration > MAX_SKIP:
            raise TooManySkipped(f"group message {n} from {self.sender!r} is more than "
                                 f"{MAX_SKIP} ahead of the last one read")
        chain, skipped = self.chain_key, {}
        for index in range(self.iteration, n):
            skipped[index], chain = _step(chain)
        message_key, chain = _step(chain)
        plaintext = self._open(message_key, aad, ciphertext)
        self.chain_key, self.iteration = chain, n + 1
        self.skipped.update(skipped)
        while len(self.skipped) > MAX_SKIP:  # the oldest skipped keys go first
            del self.skipped[min(self.skipped)]
        return plaintext

    def _open(self, message_key: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        key, nonce = _seal_key(message_key)
        try:
            return aes256gcm(key).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise DecryptionFailed(f"group message from {self.sender!r} failed "
                                   "authentication") from None

    def to_dict(self) -> dict[str, object]:
        return {"group": self.group_id, "sender": self.sender, "generation": self.generation,
                "chain": self.chain_key, "iteration": self.iteration,
                "public": self.signing_public, "skipped": dict(self.skipped)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PeerSenderKey:
        return cls(data["group"], data["sender"], data["generation"],  # type: ignore[arg-type]
                   data["chain"], data["iteration"], data["public"],  # type: ignore[arg-type]
                   dict(data["skipped"]))  # type: ignore[call-overload]

    def __repr__(self) -> str:
        return (f"PeerSenderKey(sender={self.sender!r}, generation={self.generation}, "
                f"iteration={self.iteration})")
