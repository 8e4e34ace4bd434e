"""The triple ratchet: a Double Ratchet whose every turn mixes X25519, ML-KEM-768 and QKD.

Sans-I/O: bytes in, bytes out; QKD keys are passed in by the caller.

Keys
    Each direction (initiator->responder, responder->initiator) has its own root
    key and a sequence of *turns* numbered 1, 2, ... (the initiator's chain 0
    comes straight from the handshake). Only the sender of a direction turns its
    root, so the two sides never race. A turn t mixes, with keysource.mix over
    a transcript of (old root, session id, direction, full turn header):

    * X25519: DH(fresh sender key, receiver's latest ratchet key),
    * ML-KEM-768: encapsulation to the receiver's latest ratchet KEM key,
    * QKD: fresh keys fetched by the sender with enc_keys (key_IDs in the header;
      the receiver fetches the same keys with dec_keys),

    giving the new root and the chain key of turn t. The sender advertises a new
    X25519 and ML-KEM key in every turn (its key *version* t), so the peer's next
    turn heals a compromise of the sender's state too.
    Message keys: ``mk = HMAC-SHA256(ck, 0x01)``, ``ck' = HMAC-SHA256(ck, 0x02)``:
    a symmetric step costs two HMACs and one AES-256-GCM call.

When a party turns
    before sending, when the peer has turned since our last turn (as in the
    Double Ratchet), when our chain has ``refresh_interval`` messages (so a
    one-sided stream still gets fresh PQ and QKD material), and when our chain
    is degraded (no QKD) and the caller now has QKD keys (re-mix).

Wire (big-endian; AEAD = AES-256-GCM, associated data = the whole header,
nonce = 0x00000000 || u32 turn || u32 n, unique because each key is used once)
    ordinary  ver=1 | type=1 | u32 turn | u32 n                        (10 bytes)
    turn      ver=1 | type=2 | u32 turn | u32 n=0 | u32 prev_chain_len
              | u32 peer_key_version | X25519 pub (32) | ML-KEM ct (1088)
              | ML-KEM pub (1184) | u8 k | k x (u8 len | key_ID)
    prekey    ver=1 | type=3 | u32 len | initial message | u32 turn=0 | u32 n
    followed by ciphertext || 16-byte tag.

Delivery
    Messages of a known chain decrypt in any order within ``max_skip``; the keys
    of skipped messages are kept (bounded) and deleted when used; a used or
    deleted key means a replay and is refused. A message of a turn whose turn
    message has not arrived yet is held (``Deferred``, bounded) and decrypted as
    soon as that turn arrives: the turn message carries the KEM ciphertext, so it
    must be delivered (the relay queues until acked; the outbox resends).
    A failed decryption changes nothing.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keysource import mix as combiner
from keysource import pq
from keysource.mix import MixInputs, QkdPolicy, Transcript
from keysource.pq import x25519_ephemeral, x25519_shared

from .errors import (
    DecryptionFailed,
    MalformedMessage,
    ProtocolError,
    QkdMissing,
    ReplayedMessage,
    TooManySkipped,
    UnsupportedVersion,
)
from .exporter import message_secret
from .handshake import HandshakeKeys
from .qkd import QkdKeys, decode_key_ids, encode_key_ids

VERSION = 1
T_ORDINARY = 1
T_TURN = 2
T_PREKEY = 3
KEM_NAME = "ML-KEM-768"
DH_BYTES = 32
KEM_CT_BYTES = 1088
KEM_PK_BYTES = 1184
TAG_BYTES = 16

_ORDINARY = struct.Struct(">BBII")
_TURN = struct.Struct(">BBIIII")
_NONCE = struct.Struct(">4xII")
_U32 = struct.Struct(">I")
_TURN_KEYS_END = _TURN.size + DH_BYTES + KEM_CT_BYTES + KEM_PK_BYTES
_MK = b"\x01"
_CK = b"\x02"
MIX_PURPOSE = "ratchet-turn"


@dataclass(frozen=True)
class RatchetConfig:
    """Per-conversation knobs (both sides should agree on ``policy``)."""

    policy: QkdPolicy = QkdPolicy.PREFER
    refresh_interval: int = 100  # force a PQ + QKD turn after this many messages in one chain
    qkd_keys_per_turn: int = 1
    max_skip: int = 1000  # most message keys one message may make us skip
    max_skipped_keys: int = 2000  # most skipped keys kept in total (oldest evicted)
    max_pending: int = 256  # most messages held waiting for their turn message
    max_own_versions: int = 32  # most of our ratchet key versions kept for a lagging peer


@dataclass(frozen=True)
class SendPlan:
    """What the next :meth:`Ratchet.encrypt` will do, so the I/O layer can fetch QKD keys first."""

    turn: bool  # the next message is a ratchet turn
    reason: str
    qkd_keys: int  # keys to fetch with enc_keys (0: none wanted)


@dataclass(frozen=True)
class Received:
    """A decrypted message (``sources`` of the epoch that protected it)."""

    plaintext: bytes
    turn: int
    n: int
    sources: tuple[str, ...]
    degraded: bool
    exporter: bytes = b""  # the message secret (client.protocol.exporter); never stored

    @property
    def message_id(self) -> str:
        return f"{self.turn}.{self.n}"

    def __repr__(self) -> str:  # never print plaintext
        return f"Received(turn={self.turn}, n={self.n}, bytes={len(self.plaintext)})"


@dataclass(frozen=True)
class Deferred:
    """Held until the turn message it depends on arrives."""

    turn: int
    n: int
    reason: str


@dataclass(frozen=True)
class Discarded:
    """A held message that turned out to be forged, tampered or a replay."""

    turn: int
    n: int
    reason: str


Event = Received | Deferred | Discarded


@dataclass(frozen=True)
class Header:
    kind: int
    turn: int
    n: int
    header_end: int
    prev_chain_len: int = 0
    peer_version: int = 0
    dh_public: bytes = b""
    kem_ciphertext: bytes = b""
    kem_public: bytes = b""
    qkd_key_ids: tuple[str, ...] = ()
    initial: bytes = b""


def parse_header(wire: bytes) -> Header:
    """Parse the header of a ratchet message (raises MalformedMessage; checks no crypto)."""
    if len(wire) < _ORDINARY.size + TAG_BYTES:
        raise MalformedMessage(f"message of {len(wire)} bytes is too short")
    version, kind = wire[0], wire[1]
    if version != VERSION:
        raise UnsupportedVersion(f"message version {version} is not supported (speak {VERSION})")
    if kind == T_ORDINARY:
        _, _, turn, n = _ORDINARY.unpack_from(wire)
        return Header(T_ORDINARY, turn, n, _ORDINARY.size)
    if kind == T_TURN:
        if len(wire) < _TURN_KEYS_END + 1 + TAG_BYTES:
            raise MalformedMessage("turn message is truncated")
        _, _, turn, n, prev, peer_version = _TURN.unpack_from(wire)
        if n != 0:
            raise MalformedMessage("a turn message must be message 0 of its chain")
        pos = _TURN.size
        dh = wire[pos : pos + DH_BYTES]
        pos += DH_BYTES
        ct = wire[pos : pos + KEM_CT_BYTES]
        pos += KEM_CT_BYTES
        pk = wire[pos : pos + KEM_PK_BYTES]
        pos += KEM_PK_BYTES
        key_ids, pos = decode_key_ids(wire, pos)
        if len(wire) < pos + TAG_BYTES:
            raise MalformedMessage("turn message is truncated after its header")
        return Header(T_TURN, turn, 0, pos, prev, peer_version, dh, ct, pk, key_ids)
    if kind == T_PREKEY:
        if len(wire) < 6:
            raise MalformedMessage("prekey message is truncated")
        (length,) = _U32.unpack_from(wire, 2)
        end = 6 + length
        if len(wire) < end + 8 + TAG_BYTES:
            raise MalformedMessage("prekey message is truncated")
        turn, n = struct.unpack_from(">II", wire, end)
        if turn != 0:
            raise MalformedMessage("a prekey message belongs to turn 0")
        return Header(T_PREKEY, 0, n, end + 8, initial=wire[6:end])
    raise MalformedMessage(f"unknown message type {kind}")


def _kem() -> pq.Kem:
    return pq.get_kem(KEM_NAME)


def turn_transcript(root: bytes, session_id: bytes, from_initiator: bool, header: bytes) -> bytes:
    """What a turn's mix is bound to: the old root (secret), session, direction, header."""
    return (
        Transcript("qsecret/v1/ratchet-turn")
        .add("root", root)
        .add("session", session_id)
        .add("direction", b"i2r" if from_initiator else b"r2i")
        .add("header", header)
        .to_bytes()
    )


def derive_turn(root: bytes, session_id: bytes, from_initiator: bool, header: bytes, *,
                qkd: bytes | None, kem_secret: bytes | None, dh_secret: bytes | None,
                policy: QkdPolicy = QkdPolicy.PREFER) -> combiner.MixedKey:
    """The root step of a turn: 64 bytes = new root || chain key of the turn.

    Public so tests can re-derive a turn as an attacker who knows some of the secrets.
    """
    return combiner.mix(
        MixInputs(qkd=qkd, pq=kem_secret, ecdh=dh_secret, pq_alg=KEM_NAME),
        transcript=turn_transcript(root, session_id, from_initiator, header),
        purpose=MIX_PURPOSE, length=64, policy=policy,
    )


def open_first_message(chain_key: bytes, wire: bytes) -> bytes:
    """Decrypt message 0 of a chain (the turn message) given the chain key; raises InvalidTag."""
    header = parse_header(wire)
    mk = hmac.digest(chain_key, _MK, "sha256")
    return AESGCM(mk).decrypt(_NONCE.pack(header.turn, header.n), wire[header.header_end :],
                              wire[: header.header_end])


class Ratchet:
    """One side of a conversation's triple ratchet (mutable; persist :meth:`to_dict`)."""

    def __init__(self, *, session_id: bytes, initiator: bool, config: RatchetConfig) -> None:
        self.session_id = session_id
        self.initiator = initiator
        self.config = config
        self.send_root = b""
        self.send_turn = 0
        self.send_ck: bytes | None = None
        self.send_n = 0
        self.send_sources: tuple[str, ...] = ()
        self.send_degraded = False
        self.own_keys: dict[int, tuple[bytes, bytes]] = {}
        self.peer_version = 0
        self.peer_dh = b""
        self.peer_kem = b""
        self.peer_turned = False
        self.recv_root = b""
        self.recv_turn = 0
        self.recv_ck: bytes | None = None
        self.recv_n = 0
        self.recv_sources: tuple[str, ...] = ()
        self.recv_degraded = False
        self.skipped: dict[tuple[int, int], bytes] = {}
        # sources of each receiving epoch still referenced (for messages opened late)
        self.recv_epochs: dict[int, tuple[tuple[str, ...], bool]] = {}
        self.pending: list[tuple[bytes, QkdKeys | None]] = []
        self.prekey_blob: bytes | None = None  # initiator: initial message, until the peer answers
        self.prekey_digest: bytes | None = None  # responder: the initial message we accepted

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_handshake(cls, keys: HandshakeKeys, *, initiator: bool,
                       config: RatchetConfig | None = None,
                       initial_message: bytes | None = None) -> Ratchet:
        """Start a ratchet from a completed handshake (``initial_message``: its encoding)."""
        r = cls(session_id=keys.session_id, initiator=initiator, config=config or RatchetConfig())
        r.own_keys[0] = (keys.own_dh_secret, keys.own_kem_secret)
        r.peer_dh, r.peer_kem, r.peer_version = keys.peer_dh_public, keys.peer_kem_public, 0
        if initiator:
            r.send_root, r.send_ck = keys.root_initiator, keys.chain_initiator
            r.send_sources, r.send_degraded = keys.sources, keys.degraded
            r.recv_root = keys.root_responder
            r.prekey_blob = initial_message
        else:
            r.recv_root, r.recv_ck = keys.root_initiator, keys.chain_initiator
            r.recv_sources, r.recv_degraded = keys.sources, keys.degraded
            r.recv_epochs[0] = (keys.sources, keys.degraded)
            r.send_root = keys.root_responder
            r.peer_turned = True  # the initiator's handshake keys are version 0
            if initial_message is not None:
                import hashlib

                r.prekey_digest = hashlib.sha256(initial_message).digest()
        return r

    # -- sending ----------------------------------------------------------------------

    def send_plan(self) -> SendPlan:
        """Whether the next message turns the ratchet, and how many QKD keys to fetch."""
        keys = self.config.qkd_keys_per_turn
        if self.send_ck is None:
            return SendPlan(True, "first message in this direction", keys)
        if self.peer_turned:
            return SendPlan(True, "the peer turned its ratchet", keys)
        if self.prekey_blob is None and self.send_n >= self.config.refresh_interval:
            return SendPlan(True, f"{self.send_n} messages since the last turn", keys)
        if self.send_degraded and self.prekey_blob is None:
            return SendPlan(False, "degraded: re-mix as soon as QKD keys are available", keys)
        return SendPlan(False, "symmetric step", 0)

    def encrypt(self, plaintext: bytes, qkd: QkdKeys | None = None) -> bytes:
        """Seal ``plaintext``; returns wire bytes. Persist the state before sending them."""
        return self.seal(plaintext, qkd)[0]

    def seal(self, plaintext: bytes, qkd: QkdKeys | None = None) -> tuple[bytes, bytes]:
        """:meth:`encrypt`, also returning the message's exporter secret (the receiver's
        :class:`Received` carries the same: client.protocol.exporter)."""
        plan = self.send_plan()
        if plan.turn or (qkd is not None and plan.qkd_keys):
            header, ck = self._turn(qkd)
        else:
            ck = self.send_ck
            assert ck is not None
            if self.prekey_blob is not None:
                header = (
                    bytes([VERSION, T_PREKEY])
                    + _U32.pack(len(self.prekey_blob))
                    + self.prekey_blob
                    + struct.pack(">II", 0, self.send_n)
                )
            else:
                header = _ORDINARY.pack(VERSION, T_ORDINARY, self.send_turn, self.send_n)
        mk = hmac.digest(ck, _MK, "sha256")
        self.send_ck = hmac.digest(ck, _CK, "sha256")
        nonce = _NONCE.pack(self.send_turn, self.send_n)
        self.send_n += 1
        return header + AESGCM(mk).encrypt(nonce, plaintext, header), message_secret(mk)

    def _turn(self, qkd: QkdKeys | None) -> tuple[bytes, bytes]:
        kem = _kem()
        turn = self.send_turn + 1
        dh_pair, dh_secret = x25519_ephemeral(self.peer_dh)
        kem_pair = kem.generate_keypair()
        kem_ct, kem_secret = kem.encapsulate(self.peer_kem)
        header = (
            _TURN.pack(VERSION, T_TURN, turn, 0, self.send_n, self.peer_version)
            + dh_pair.public_key
            + kem_ct
            + kem_pair.public_key
            + encode_key_ids(qkd.key_ids if qkd else ())
        )
        mixed = derive_turn(self.send_root, self.session_id, self.initiator, header,
                            qkd=qkd.material if qkd else None, kem_secret=kem_secret,
                            dh_secret=dh_secret, policy=self.config.policy)
        # commit only after everything that can fail has succeeded
        self.send_root, chain = mixed.key[:32], mixed.key[32:]
        self.send_turn, self.send_n = turn, 0
        self.send_sources, self.send_degraded = mixed.sources, mixed.degraded
        self.own_keys[turn] = (dh_pair.secret_key, kem_pair.secret_key)
        while len(self.own_keys) > self.config.max_own_versions:
            del self.own_keys[min(self.own_keys)]
        self.peer_turned = False
        return header, chain

    # -- receiving --------------------------------------------------------------------

    def qkd_needed(self, wire: bytes) -> tuple[str, ...]:
        """key_IDs the caller must fetch with dec_keys before :meth:`decrypt` of ``wire``."""
        return parse_header(wire).qkd_key_ids

    def decrypt(self, wire: bytes, qkd: QkdKeys | None = None) -> list[Event]:
        """Open ``wire``; returns it (or Deferred) plus any held messages it released.

        Raises (changing nothing) when ``wire`` itself is malformed, forged, tampered,
        replayed, or needs QKD keys that were not passed.
        """
        header = parse_header(wire)
        if header.qkd_key_ids:
            if qkd is None:
                raise QkdMissing(
                    f"message {header.turn}.{header.n} names QKD key(s) "
                    f"{', '.join(header.qkd_key_ids)}: fetch them with dec_keys and pass them"
                )
            qkd = qkd.select(header.qkd_key_ids)
        event = self._open(wire, header, qkd)
        events: list[Event] = [event]
        if isinstance(event, Deferred):
            self._hold(wire, qkd, event)
        elif header.kind == T_TURN:
            events.extend(self._release_pending())
        return events

    def _hold(self, wire: bytes, qkd: QkdKeys | None, event: Deferred) -> None:
        if any(held == wire for held, _ in self.pending):
            return
        if len(self.pending) >= self.config.max_pending:
            raise TooManySkipped(
                f"{len(self.pending)} messages already wait for a missing turn message; "
                "refusing to hold more"
            )
        self.pending.append((wire, qkd))

    def _release_pending(self) -> list[Event]:
        released: list[Event] = []
        progress = True
        while progress and self.pending:
            progress = False
            for index, (wire, qkd) in enumerate(self.pending):
                header = parse_header(wire)
                try:
                    event = self._open(wire, header, qkd)
                except ProtocolError as exc:
                    del self.pending[index]
                    released.append(Discarded(header.turn, header.n, str(exc)))
                    progress = True
                    break
                if isinstance(event, Deferred):
                    continue
                del self.pending[index]
                released.append(event)
                progress = True
                break
        return released

    def _open(self, wire: bytes, header: Header, qkd: QkdKeys | None) -> Received | Deferred:
        turn, n = header.turn, header.n
        if header.kind == T_TURN:
            if turn <= self.recv_turn:
                raise ReplayedMessage(f"turn message {turn} was already processed (a replay)")
            if turn > self.recv_turn + 1:
                return Deferred(turn, n, f"waiting for turn message {self.recv_turn + 1}")
            return self._open_turn(wire, header, qkd)
        if header.kind == T_PREKEY:
            import hashlib

            if self.prekey_digest is None or hashlib.sha256(header.initial).digest() != (
                self.prekey_digest
            ):
                raise ReplayedMessage("prekey message of another session (a new handshake?)")
        header_bytes = wire[: header.header_end]
        body = wire[header.header_end :]
        if turn == self.recv_turn and self.recv_ck is not None:
            if n >= self.recv_n:
                if n - self.recv_n > self.config.max_skip:
                    raise TooManySkipped(
                        f"message {turn}.{n} would skip {n - self.recv_n} keys "
                        f"(window {self.config.max_skip})"
                    )
                ck = self.recv_ck
                new_skipped = {}
                for index in range(self.recv_n, n):
                    new_skipped[(turn, index)] = hmac.digest(ck, _MK, "sha256")
                    ck = hmac.digest(ck, _CK, "sha256")
                mk = hmac.digest(ck, _MK, "sha256")
                plaintext = self._aead_open(mk, turn, n, body, header_bytes)
                self.recv_ck = hmac.digest(ck, _CK, "sha256")
                self.recv_n = n + 1
                if new_skipped:
                    self._store_skipped(new_skipped)
                self._confirmed()
                return Received(plaintext, turn, n, self.recv_sources, self.recv_degraded,
                                message_secret(mk))
            return self._open_skipped(turn, n, body, header_bytes)
        if turn < self.recv_turn or (turn == self.recv_turn and self.recv_ck is None):
            return self._open_skipped(turn, n, body, header_bytes)
        return Deferred(turn, n, f"waiting for turn message {self.recv_turn + 1}")

    def _open_skipped(self, turn: int, n: int, body: bytes, header_bytes: bytes) -> Received:
        mk = self.skipped.get((turn, n))
        if mk is None:
            raise ReplayedMessage(
                f"message {turn}.{n}: its key was already used or is out of the window "
                "(a duplicate or a replay)"
            )
        plaintext = self._aead_open(mk, turn, n, body, header_bytes)
        del self.skipped[(turn, n)]
        self._confirmed()
        sources, degraded = self.recv_epochs.get(turn, (self.recv_sources, self.recv_degraded))
        return Received(plaintext, turn, n, sources, degraded, message_secret(mk))

    def _open_turn(self, wire: bytes, header: Header, qkd: QkdKeys | None) -> Received:
        own = self.own_keys.get(header.peer_version)
        if own is None:
            raise ProtocolError(
                f"turn {header.turn} uses our ratchet key version {header.peer_version}, "
                "which we no longer hold (too old)"
            )
        if header.prev_chain_len - self.recv_n > self.config.max_skip:
            raise TooManySkipped(f"turn {header.turn} would skip more than the window")
        dh_secret = x25519_shared(own[0], header.dh_public)
        try:
            kem_secret = _kem().decapsulate(own[1], header.kem_ciphertext)
        except pq.PqError as exc:
            raise MalformedMessage(f"turn {header.turn}: KEM ciphertext rejected: {exc}") from None
        header_bytes = wire[: header.header_end]
        mixed = derive_turn(self.recv_root, self.session_id, not self.initiator, header_bytes,
                            qkd=qkd.material if qkd else None, kem_secret=kem_secret,
                            dh_secret=dh_secret, policy=self.config.policy)
        root, ck = mixed.key[:32], mixed.key[32:]
        mk = hmac.digest(ck, _MK, "sha256")
        plaintext = self._aead_open(mk, header.turn, 0, wire[header.header_end :],
                                    header_bytes)
        # previous chain: keep the keys of its messages not yet received
        new_skipped = {}
        if self.recv_ck is not None:
            prev_ck = self.recv_ck
            for index in range(self.recv_n, header.prev_chain_len):
                new_skipped[(self.recv_turn, index)] = hmac.digest(prev_ck, _MK, "sha256")
                prev_ck = hmac.digest(prev_ck, _CK, "sha256")
        self.recv_root, self.recv_turn = root, header.turn
        self.recv_ck, self.recv_n = hmac.digest(ck, _CK, "sha256"), 1
        self.recv_sources, self.recv_degraded = mixed.sources, mixed.degraded
        self.recv_epochs[header.turn] = (mixed.sources, mixed.degraded)
        self._store_skipped(new_skipped)
        live = {t for t, _ in self.skipped} | {header.turn}
        for old in [t for t in self.recv_epochs if t not in live]:
            del self.recv_epochs[old]
        self.peer_version, self.peer_dh, self.peer_kem = (
            header.turn, header.dh_public, header.kem_public)
        self.peer_turned = True
        for version in [v for v in self.own_keys if v < header.peer_version]:
            del self.own_keys[version]
        self._confirmed()
        return Received(plaintext, header.turn, 0, mixed.sources, mixed.degraded,
                        message_secret(mk))

    def _aead_open(self, mk: bytes, turn: int, n: int, body: bytes, header: bytes) -> bytes:
        try:
            return AESGCM(mk).decrypt(_NONCE.pack(turn, n), body, header)
        except InvalidTag:
            raise DecryptionFailed(
                f"message {turn}.{n} failed authentication (tampered, truncated or forged)"
            ) from None

    def _store_skipped(self, new: dict[tuple[int, int], bytes]) -> None:
        self.skipped.update(new)
        excess = len(self.skipped) - self.config.max_skipped_keys
        if excess > 0:
            for key in list(self.skipped)[:excess]:
                del self.skipped[key]

    def _confirmed(self) -> None:
        self.prekey_blob = None

    # -- persistence ------------------------------------------------------------------

    def to_dict(self) -> dict:
        c = self.config
        return {
            "v": 1,
            "session_id": self.session_id,
            "initiator": self.initiator,
            "config": [c.policy.value, c.refresh_interval, c.qkd_keys_per_turn, c.max_skip,
                       c.max_skipped_keys, c.max_pending, c.max_own_versions],
            "send": [self.send_root, self.send_turn, self.send_ck, self.send_n,
                     list(self.send_sources), self.send_degraded],
            "own_keys": [[v, dh, kem] for v, (dh, kem) in self.own_keys.items()],
            "peer": [self.peer_version, self.peer_dh, self.peer_kem, self.peer_turned],
            "recv": [self.recv_root, self.recv_turn, self.recv_ck, self.recv_n,
                     list(self.recv_sources), self.recv_degraded],
            "skipped": [[t, n, mk] for (t, n), mk in self.skipped.items()],
            "epochs": [[t, list(s), d] for t, (s, d) in self.recv_epochs.items()],
            "pending": [[w, list(q.key_ids) if q else None, list(q.keys) if q else None]
                        for w, q in self.pending],
            "prekey": [self.prekey_blob, self.prekey_digest],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Ratchet:
        if data.get("v") != 1:
            raise UnsupportedVersion("ratchet state version is not supported")
        policy, *limits = data["config"]
        config = RatchetConfig(QkdPolicy(policy), *limits)
        r = cls(session_id=data["session_id"], initiator=data["initiator"], config=config)
        (r.send_root, r.send_turn, r.send_ck, r.send_n, sources, r.send_degraded) = data["send"]
        r.send_sources = tuple(sources)
        r.own_keys = {v: (dh, kem) for v, dh, kem in data["own_keys"]}
        r.peer_version, r.peer_dh, r.peer_kem, r.peer_turned = data["peer"]
        (r.recv_root, r.recv_turn, r.recv_ck, r.recv_n, sources, r.recv_degraded) = data["recv"]
        r.recv_sources = tuple(sources)
        r.skipped = {(t, n): mk for t, n, mk in data["skipped"]}
        r.recv_epochs = {t: (tuple(s), d) for t, s, d in data["epochs"]}
        r.pending = [(w, QkdKeys(tuple(ids), tuple(keys)) if ids else None)
                     for w, ids, keys in data["pending"]]
        r.prekey_blob, r.prekey_digest = data["prekey"]
        return r
