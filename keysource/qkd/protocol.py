"""The two endpoint state machines of a decoy-state BB84 link, and the frame codec (sans-I/O).

An endpoint consumes frames (bytes) and returns frames to send, key batches and block reports;
it never touches a socket. Frame kinds: b"Q" quantum frame (Alice -> Bob, unauthenticated, as a
real quantum channel), b"C" classical message (authenticated, see auth.py), b"R" room control
(unauthenticated flow control: how many keys the peer's pool still accepts).

One block, Alice (A) and Bob (B):

    A: Q frame, START(n_slots, Cascade seed, last commit)                           tagged
    B: detects (his bits are fixed from here on)
    B: SIFT(detected slots, Bob's bases)                                           tagged
    A: SIFT_REPLY(Alice's bases and intensity classes, pulses per class, decoy bits,
                  sample seed, Alice's bits at the sample positions)               tagged
    B: ESTIMATE(error counts)  -> both: QBER, decoy bounds, abort or go on         tagged
    B: CASCADE_Q ...  A: CASCADE_A ...  (Bob-driven Cascade)                        deferred
    B: VERIFY(hash key, hash of Bob's frame)   -- covers Bob's Cascade questions    tagged
    A: VERIFY_RESULT(ok, key length, Toeplitz seed, key_IDs, auth refill) -- covers answers
    B: DONE(room)   A: commits;   A: COMMIT(count)   B: commits                    tagged
    either side, any time: ABORT(reason)                                            tagged

Both ends derive every decision (abort, Cascade block sizes, key length) from the same
authenticated data with the same deterministic functions. Alice commits a block on DONE, Bob on
COMMIT or on the next START naming it as Alice's last commit (and drops it on one that does not);
what each end must remember of this across a crash is ``export_state`` (see durable.py).

The QBER test positions are chosen by Alice only when she answers SIFT, after Bob's detections
and bases (hence his bits and the sifted set) are fixed, and announced with her bits there: an
eavesdropper who reads START learns nothing about which pulses will be tested, so she cannot
spare them and attack only the key frame (tests/qkd/test_sample_after_detection.py).
"""

from __future__ import annotations

import logging
import math
import struct
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Self

import cbor2
import numpy as np

from keysource.uuid_text import uuid_bytes, uuid_texts

from . import amplification, estimation, verification
from .auth import AuthError, AuthKeyExhausted, ChannelAuth, KeyStream
from .cascade import CascadeAlice, CascadeBob, ParityQuery
from .channel import Detections, detect
from .params import DECOY, SIGNAL, VACUUM, LinkParams
from .public_random import PublicRandom
from .source import AliceRecord, PulseFrame, alice_view, emit_block

KeyBatch = list[tuple[str, bytes]]
KEY_BYTES = 32
VERSION = 1
MAX_FRAME_BYTES = 256 << 20
MIN_FRAME_BITS = 1024
STATE_VERSION = 1  # of export_state's encoding

(START, SIFT, SIFT_REPLY, ESTIMATE, CASCADE_Q, CASCADE_A, VERIFY, VERIFY_RESULT, DONE, COMMIT,
 ABORT) = range(1, 12)
NAMES = {START: "START", SIFT: "SIFT", SIFT_REPLY: "SIFT_REPLY", ESTIMATE: "ESTIMATE",
         CASCADE_Q: "CASCADE_Q", CASCADE_A: "CASCADE_A", VERIFY: "VERIFY",
         VERIFY_RESULT: "VERIFY_RESULT", DONE: "DONE", COMMIT: "COMMIT", ABORT: "ABORT"}
DEFERRED = {CASCADE_Q, CASCADE_A}
_HEADER = struct.Struct(">BBIi")  # version, type, block, pad index (-1: deferred)
_QHEADER = struct.Struct(">IQBIB")  # block, n_slots, attenuated, count, delta width
log = logging.getLogger("qsecret.qkd")


class ProtocolError(Exception):
    """A frame that cannot be decoded or does not fit the protocol state."""


@dataclass(frozen=True)
class BlockReport:
    """What happened to one block (the same figures at both ends)."""

    block: int
    aborted: bool
    reason: str | None
    qber: float
    sifted_bits: int
    secret_bits: int
    keys: int
    pulses: int
    duration_s: float
    auth_bits_used: int
    qber_sample: float = 0.0
    y1_lower: float = 0.0
    e1_upper: float = 0.5
    frame_bits: int = 0
    leaked_bits: int = 0
    cascade_efficiency: float = 0.0
    cascade_rounds: int = 0
    auth_bits_refilled: int = 0
    link_time_s: float = 0.0
    role: str = "alice"
    eve_known_frame_bits: int = 0  # filled in by the pair runner when it plays Eve


@dataclass
class Output:
    send: list[bytes] = field(default_factory=list)
    keys: list[KeyBatch] = field(default_factory=list)
    reports: list[BlockReport] = field(default_factory=list)

    def extend(self, other: Output) -> Output:
        self.send += other.send
        self.keys += other.keys
        self.reports += other.reports
        return self


# -- codecs -----------------------------------------------------------------------------------

def _gaps(slots: np.ndarray) -> np.ndarray:
    """The gaps of a sorted slot list, the first from 0 (np.diff with prepend, without the
    copy of the whole list that prepending makes)."""
    gaps = np.empty(slots.size, np.int64)
    if slots.size:
        gaps[0] = slots[0]
        np.subtract(slots[1:], slots[:-1], out=gaps[1:])
    return gaps


def encode_quantum(frame: PulseFrame) -> bytes:
    deltas = _gaps(frame.slot)
    width = 4 if deltas.size == 0 or int(deltas.max()) < 1 << 32 else 8
    flags = (frame.basis | (frame.bit << 1) | (frame.lossless.astype(np.uint8) << 2))
    return b"".join([
        b"Q", _QHEADER.pack(frame.block, frame.n_slots, int(frame.attenuated), len(frame), width),
        deltas.astype(">u4" if width == 4 else ">u8").tobytes(), flags.astype(np.uint8).tobytes(),
        np.minimum(frame.photons, 255).astype(np.uint8).tobytes(),
        np.minimum(frame.capable, 255).astype(np.uint8).tobytes(),
    ])


def decode_quantum(data: bytes) -> PulseFrame:
    """Parse and validate a quantum frame; ProtocolError if it is malformed."""
    if len(data) < 1 + _QHEADER.size or data[:1] != b"Q":
        raise ProtocolError("quantum frame too short")
    block, n_slots, attenuated, count, width = _QHEADER.unpack_from(data, 1)
    if width not in (4, 8) or len(data) != 1 + _QHEADER.size + count * (width + 3):
        raise ProtocolError("quantum frame length does not match its header")
    pos = 1 + _QHEADER.size
    deltas = np.frombuffer(data, ">u4" if width == 4 else ">u8", count, pos).astype(np.int64)
    pos += count * width
    flags, photons, capable = (np.frombuffer(data, np.uint8, count, pos + i * count)
                               for i in range(3))
    increasing = deltas[1:].min(initial=1) >= 1
    slot = np.cumsum(deltas, out=deltas)  # in place (the gaps are not needed any more)
    if count and (not increasing or slot[-1] >= n_slots or slot[0] < 0):
        raise ProtocolError("quantum frame slots are not increasing within the block")
    if count and (capable.min() < 1 or (capable > photons).any() or flags.max() > 7):
        raise ProtocolError("quantum frame has inconsistent photon numbers")
    return PulseFrame(
        block=block, n_slots=n_slots, attenuated=bool(attenuated), slot=slot,
        basis=(flags & 1).astype(np.uint8), bit=((flags >> 1) & 1).astype(np.uint8),
        photons=photons.astype(np.uint16), capable=capable.astype(np.uint16),
        lossless=((flags >> 2) & 1).astype(bool),
    )


@dataclass
class Classical:
    type: int
    block: int
    pad_index: int
    body: bytes
    tag: bytes = b""

    @property
    def signed_part(self) -> bytes:
        return _HEADER.pack(VERSION, self.type, self.block, self.pad_index) + self.body

    def to_frame(self) -> bytes:
        return b"C" + self.signed_part + self.tag

    @classmethod
    def parse(cls, frame: bytes) -> Classical:
        if len(frame) < 1 + _HEADER.size or frame[:1] != b"C":
            raise ProtocolError("classical frame too short")
        version, kind, block, pad_index = _HEADER.unpack_from(frame, 1)
        if version != VERSION or kind not in NAMES:
            raise ProtocolError(f"unknown classical message (version {version}, type {kind})")
        tag_len = 0 if kind in DEFERRED else 16
        if (pad_index < 0) != (kind in DEFERRED) or len(frame) < 1 + _HEADER.size + tag_len:
            raise ProtocolError("classical message tag does not match its type")
        end = len(frame) - tag_len
        return cls(kind, block, pad_index, frame[1 + _HEADER.size: end], frame[end:])


def _pack_bits(bits: np.ndarray) -> bytes:
    return np.packbits(bits.astype(np.uint8)).tobytes()


def _unpack_bits(data: object, count: int) -> np.ndarray:
    if count < 0 or not isinstance(data, bytes) or len(data) != (count + 7) // 8:
        raise ProtocolError("packed bit field has the wrong length")
    return np.unpackbits(np.frombuffer(data, np.uint8), count=count)


_DELTA_TYPES = {1: np.dtype("u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def encode_slots(slots: np.ndarray) -> tuple[int, bytes]:
    """Sorted slot numbers as gaps in the narrowest unsigned width that holds every gap
    (2 bytes a slot on a metro link instead of 8)."""
    deltas = _gaps(slots)
    top = int(deltas.max()) if deltas.size else 0
    width = next(w for w in (1, 2, 4, 8) if top < 1 << (8 * w))
    return width, deltas.astype(_DELTA_TYPES[width]).tobytes()


def decode_slots(width: object, data: object, count: int, n_slots: int) -> np.ndarray:
    """Inverse of :func:`encode_slots`; ProtocolError unless strictly increasing and below
    ``n_slots``."""
    if width not in _DELTA_TYPES or not isinstance(data, bytes) or count < 0:
        raise ProtocolError("bad slot list")
    if len(data) != width * count:  # type: ignore[operator]
        raise ProtocolError("slot list length mismatch")
    deltas = np.frombuffer(data, _DELTA_TYPES[width])  # type: ignore[index]
    if not count:
        return np.zeros(0, np.int64)
    top = int(deltas.max())
    if deltas[1:].min(initial=1) < 1 or top >= n_slots:
        raise ProtocolError("detected slots out of range or not increasing")
    slots = deltas.astype(np.int64)
    np.cumsum(slots, out=slots)  # casting first, then summing in place: half the time
    # the sum of the gaps cannot overflow when count * top is small (always, for an honest
    # peer); otherwise the last slot alone would not prove the list in range
    if int(slots[-1]) >= n_slots or (count * top >= 1 << 63 and bool(
            (slots[1:] <= slots[:-1]).any())):
        raise ProtocolError("detected slots out of range or not increasing")
    return slots


def encode_classes(cls: np.ndarray) -> bytes:
    """Intensity classes (0, 1, 2) as two packed bit planes: a quarter of a byte each."""
    return _pack_bits(cls & 1) + _pack_bits(cls >> 1)


def decode_classes(data: object, count: int) -> np.ndarray:
    """Inverse of :func:`encode_classes`; ProtocolError on a wrong length or class 3."""
    size = (count + 7) // 8
    if not isinstance(data, bytes) or len(data) != 2 * size:
        raise ProtocolError("class list length mismatch")
    low, high = _unpack_bits(data[:size], count), _unpack_bits(data[size:], count)
    if (low & high).any():
        raise ProtocolError("unknown intensity class")
    return low | (high << 1)


def class_counts(cls: np.ndarray, sifted: np.ndarray) -> tuple[list[int], list[int]]:
    """Detections and sifted detections per intensity class."""
    detections, kept = [], []
    for klass in (SIGNAL, DECOY, VACUUM):
        member = cls == klass
        detections.append(int(np.count_nonzero(member)))
        kept.append(int(np.count_nonzero(member & sifted)))
    return detections, kept


def _body(message: Classical) -> dict:
    try:
        body = cbor2.loads(message.body)
    except Exception as exc:  # cbor2 raises several types on garbage; all mean "malformed"
        raise ProtocolError(f"{NAMES[message.type]}: malformed body") from exc
    if not isinstance(body, dict):
        raise ProtocolError(f"{NAMES[message.type]}: body is not a map")
    return body


def _field(body: dict, key: str, kind: type | tuple[type, ...]) -> object:
    value = body.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise ProtocolError(f"missing or bad field {key!r}")
    return value


def _encode_queries(queries: list[ParityQuery]) -> bytes:
    """CASCADE_Q body: one (pass, level, count) per question and all node ids in one field."""
    ids = np.concatenate([q.ids for q in queries]) if queries else np.zeros(0, np.int64)
    return cbor2.dumps({"q": [[q.pass_index, q.level, int(q.ids.size)] for q in queries],
                        "ids": ids.astype("<u4").tobytes()})


def _decode_queries(body: dict) -> list[ParityQuery]:
    raw = _field(body, "q", list)
    packed = _field(body, "ids", bytes)
    if len(packed) % 4:  # type: ignore[arg-type]
        raise ProtocolError("bad cascade query")
    ids = np.frombuffer(packed, "<u4").astype(np.int64)  # type: ignore[arg-type]
    queries, pos = [], 0
    for item in raw:  # type: ignore[union-attr]
        if (not isinstance(item, list) or len(item) != 3
                or not all(type(x) is int and x >= 0 for x in item)):
            raise ProtocolError("bad cascade query")
        queries.append(ParityQuery(item[0], item[1], ids[pos: pos + item[2]]))
        pos += item[2]
    if pos != ids.size:
        raise ProtocolError("cascade query counts do not match its node ids")
    return queries


# -- shared deterministic planning -----------------------------------------------------------

def plan_frame(params: LinkParams, signal_sifted: np.ndarray, order_seed: int
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """Split the sifted signal detections into a revealed random sample and the key frame.

    The sample is a uniformly random subset (public seed, drawn by Alice only after Bob has
    reported his detections, so nobody could have aimed an attack at the untested pulses); the
    frame is the next ``frame_bits`` of the rest in slot order (detections are i.i.d., so order
    is immaterial).
    """
    n_sample = params.sample_bits
    n_frame = min(params.frame_bits, signal_sifted.size - n_sample)
    if n_frame < MIN_FRAME_BITS:
        return None
    rng = np.random.default_rng(order_seed)
    chosen = np.sort(rng.choice(signal_sifted.size, n_sample, replace=False))
    rest = np.ones(signal_sifted.size, bool)
    rest[chosen] = False
    return signal_sifted[chosen], signal_sifted[rest][:n_frame]


def decide(params: LinkParams, stats: estimation.BlockStats, frame_bits: int
           ) -> tuple[str | None, estimation.DecoyBounds]:
    """Abort reason (None to go on) and the decoy bounds, from the public statistics."""
    bounds = estimation.decoy_bounds(params, stats)
    qber = stats.qber_sample
    if qber > params.qber_threshold:
        return f"QBER {qber:.3f} above threshold {params.qber_threshold:.3f}", bounds
    if bounds.y1_lower <= 0:
        return "decoy-state bound: no single-photon yield (attack or too much loss)", bounds
    shannon_leak = math.ceil(frame_bits * estimation.binary_entropy(qber))
    if estimation.secure_length(params, bounds, frame_bits, shannon_leak) <= 0:
        return "decoy-state bound leaves no secure key for this block", bounds
    return None, bounds


def split_output(secret: bytes, refill: tuple[int, int], key_ids: list[str]
                 ) -> tuple[bytes, bytes, KeyBatch]:
    a, b = refill
    keys = [(key_ids[i], secret[a + b + KEY_BYTES * i: a + b + KEY_BYTES * (i + 1)])
            for i in range(len(key_ids))]
    return secret[:a], secret[a: a + b], keys


@dataclass
class _Block:
    number: int
    started: float
    auth_bits_at_start: int
    n_slots: int = 0
    order_seed: int = 0
    rng: np.random.Generator | None = None  # Alice's physics generator for this block
    record: AliceRecord | None = None
    detections: Detections | None = None
    sifted_signal: int = 0
    stats: estimation.BlockStats | None = None
    bounds: estimation.DecoyBounds | None = None
    frame_bits: np.ndarray | None = None
    sample_qber: float = 0.0
    alice_cascade: CascadeAlice | None = None
    bob_cascade: CascadeBob | None = None
    corrected_errors: int = 0
    leaked: int = 0
    rounds: int = 0
    secret_len: int = 0
    pending: tuple[bytes, bytes, KeyBatch] | None = None
    refill: tuple[int, int] = (0, 0)


class _Endpoint(ABC):
    role = "?"
    _salt = -1  # domain of the seeded physics generators (Eve's is 2, see pair.py)

    def __init__(self, params: LinkParams, psk: bytes | None = None, *,
                 auth: ChannelAuth | None = None) -> None:
        if auth is None:
            if psk is None:
                raise ValueError("need a pre-shared key or an auth state")
            auth = ChannelAuth.from_psk(psk, self.role)
        self.params = params
        self.auth = auth
        # the emulated physics (Alice's source, Bob's detector): this OS-seeded generator, or
        # with a seed one generator per block (see _physics), so a restarted link goes on
        self.rng = np.random.default_rng() if params.seed is None else None
        self.public = PublicRandom(params.seed, self.role)
        self.psk_id: bytes | None = None  # which PSK the auth streams grew from (net.py sets it)
        self.block: _Block | None = None
        self.last_qber = 0.0

    # -- durable state (see durable.py) ------------------------------------------------
    def export_state(self) -> bytes:
        """What this end must find again after a crash: both authentication key streams (so
        no pad is used twice) and what it agreed with the peer (block numbers, a pending
        commit). The shell stores it atomically with the keys of the same step, before that
        step's frames leave. Holds unused authentication key: protect it like the PSK."""
        return cbor2.dumps({"v": STATE_VERSION, "role": self.role, "psk_id": self.psk_id,
                            "send": self.auth.send.to_bytes(), "recv": self.auth.recv.to_bytes(),
                            **self._durable()})

    @classmethod
    def from_state(cls, params: LinkParams, state: bytes) -> Self:
        """An endpoint resumed from :meth:`export_state` (ValueError if it is not one)."""
        try:
            body = cbor2.loads(state)
        except Exception as exc:  # cbor2 raises several types on garbage
            raise ValueError(f"not a QKD link state: {exc}") from None
        if not isinstance(body, dict) or body.get("v") != STATE_VERSION:
            raise ValueError("not a QKD link state of a version this qsecret understands")
        if body.get("role") != cls.role:
            raise ValueError(f"QKD link state of {body.get('role')!r}, not of {cls.role!r}")
        try:
            send = KeyStream.from_bytes(_field(body, "send", bytes))  # type: ignore[arg-type]
            recv = KeyStream.from_bytes(_field(body, "recv", bytes))  # type: ignore[arg-type]
            endpoint = cls(params, auth=ChannelAuth(send, recv))
            psk_id = body.get("psk_id")
            endpoint.psk_id = psk_id if isinstance(psk_id, bytes) else None
            endpoint._restore(body)
        except ProtocolError as exc:
            raise ValueError(f"damaged QKD link state: {exc}") from None
        return endpoint

    def reprovision(self, psk: bytes) -> None:
        """Start authentication afresh from a new PSK (both ends do it), keeping the block
        agreement; a refill of a block still pending belonged to the old streams: dropped."""
        self.auth = ChannelAuth.from_psk(psk, self.role)

    @abstractmethod
    def _durable(self) -> dict:
        """This end's part of the state both ends must agree on."""

    @abstractmethod
    def _restore(self, body: dict) -> None:
        """Take back what :meth:`_durable` saved (ProtocolError if malformed)."""

    def _physics(self, block: int) -> np.random.Generator:
        """The generator of the emulated physics for ``block``."""
        if self.rng is not None:
            return self.rng
        return np.random.default_rng([self.params.seed, self._salt, block])

    # -- message helpers ----------------------------------------------------------------
    def _message(self, kind: int, block: int, body: dict | bytes) -> bytes:
        """A classical frame: ``body`` (a map, or one already CBOR-encoded) tagged or, for the
        Cascade kinds, appended to the deferred transcript."""
        payload = body if isinstance(body, bytes) else cbor2.dumps(body)
        if kind in DEFERRED:
            signed = Classical(kind, block, -1, payload).signed_part
            self.auth.defer_send(signed)
            return b"C" + signed
        index = self.auth.next_send_index()
        signed = Classical(kind, block, index, payload).signed_part
        return b"C" + signed + self.auth.tag(index, signed)

    def _accept(self, message: Classical) -> None:
        """Authenticate (tagged) or record (deferred) an incoming message."""
        if message.type in DEFERRED:
            self.auth.defer_recv(message.signed_part)
        else:
            self.auth.verify(message.pad_index, message.signed_part, message.tag)

    def _report(self, blk: _Block, *, aborted: bool, reason: str | None, keys: int = 0,
                refilled: int = 0) -> BlockReport:
        frame_n = 0 if blk.frame_bits is None else int(blk.frame_bits.size)
        qber = (blk.corrected_errors / frame_n if frame_n and blk.leaked
                else blk.sample_qber)
        h = estimation.binary_entropy(qber)
        return BlockReport(
            block=blk.number, aborted=aborted, reason=reason, qber=qber,
            sifted_bits=blk.sifted_signal, secret_bits=0 if aborted else blk.secret_len,
            keys=keys, pulses=blk.n_slots, duration_s=time.perf_counter() - blk.started,
            auth_bits_used=self.auth.used_bits - blk.auth_bits_at_start,
            qber_sample=blk.sample_qber,
            y1_lower=blk.bounds.y1_lower if blk.bounds else 0.0,
            e1_upper=blk.bounds.e1_upper if blk.bounds else 0.5,
            frame_bits=frame_n, leaked_bits=blk.leaked,
            cascade_efficiency=(blk.leaked - verification.TAG_BITS) / (frame_n * h)
            if frame_n and h > 0 and blk.leaked else 0.0,
            cascade_rounds=blk.rounds, auth_bits_refilled=refilled,
            link_time_s=blk.n_slots / self.params.pulse_rate_hz, role=self.role,
        )

    def _abort(self, reason: str, *, notify: bool) -> Output:
        """Discard the current block (telling the peer when ``notify``)."""
        out = Output()
        blk = self.block
        if blk is None:
            return out
        if notify and self.auth.send.available_pads() > 0:
            out.send.append(self._message(ABORT, blk.number, {"reason": reason[:200]}))
        elif notify:
            reason += " (peer not told: authentication key exhausted)"
        self.auth.reset_transcripts()
        out.reports.append(self._report(blk, aborted=True, reason=reason))
        self.block = None
        return out

    def _stats(self, counts: tuple[list[int], list[int]], class_slots: list[int],
               errors: list[int], n_sample: int) -> estimation.BlockStats:
        detections, sifted_per = counts
        return estimation.BlockStats(
            slots=tuple(int(x) for x in class_slots),  # type: ignore[arg-type]
            detections=tuple(detections),  # type: ignore[arg-type]
            sifted=tuple(sifted_per),  # type: ignore[arg-type]
            errors=tuple(int(x) for x in errors),  # type: ignore[arg-type]
            revealed=(n_sample, sifted_per[DECOY], sifted_per[VACUUM]),
        )

    def receive(self, frame: bytes) -> Output:
        """Handle one incoming frame. Never raises on bad input: it aborts the block instead."""
        if len(frame) > MAX_FRAME_BYTES:
            return self._abort("frame too large", notify=True)
        kind = frame[:1]
        try:
            if kind == b"Q":
                return self._on_quantum(frame)
            if kind != b"C":
                raise ProtocolError(f"unknown frame kind {kind!r}")
            message = Classical.parse(frame)
        except ProtocolError as exc:
            return self._abort(f"malformed frame: {exc}", notify=True)
        blk = self.block
        stale = blk is None or message.block != blk.number
        if stale and message.type not in (START, COMMIT):
            if message.type not in DEFERRED:
                # we act on nothing in it, but its pad is spent: never accept that index again
                self.auth.skip(message.pad_index)
            return Output()
        try:
            self._accept(message)
        except AuthError as exc:
            return self._abort(f"{NAMES[message.type]}: {exc}", notify=message.type != ABORT)
        except AuthKeyExhausted as exc:
            return self._abort(str(exc), notify=False)
        if message.type == ABORT:
            try:
                reason = _body(message).get("reason")
            except ProtocolError:
                reason = "(unreadable reason)"
            return self._abort(f"peer aborted: {reason}", notify=False)
        try:
            return self._on_classical(message)
        except (ProtocolError, ValueError) as exc:
            return self._abort(f"{NAMES[message.type]}: {exc}", notify=True)
        except AuthKeyExhausted as exc:
            return self._abort(str(exc), notify=False)
        except Exception as exc:  # an input nobody foresaw: void the block, keep the link
            log.exception("qkd %s: unexpected error on %s", self.role, NAMES[message.type])
            return self._abort(f"{NAMES[message.type]}: unexpected {type(exc).__name__}",
                               notify=True)

    def _on_quantum(self, frame: bytes) -> Output:
        raise ProtocolError("unexpected quantum frame")

    @abstractmethod
    def _on_classical(self, message: Classical) -> Output:
        """Handle one authenticated classical message (each end answers its own kinds)."""


class AliceEndpoint(_Endpoint):
    """Alice: emits pulses, answers Cascade questions, decides the key length and key_IDs."""

    role = "alice"
    _salt = 0

    def __init__(self, params: LinkParams, psk: bytes | None = None, *,
                 auth: ChannelAuth | None = None) -> None:
        super().__init__(params, psk, auth=auth)
        self.next_block = 0
        # one Cascade seed per link: its permutations are computed once (cascade.permutations)
        self.cascade_seed = self.public.integer("cascade permutations", 0, 4)
        self.peer_room: int | None = None
        self.last_committed = -1
        self.last_count = 0
        self.room = 1 << 62
        self.last_frame_slots = np.zeros(0, np.int64)

    @property
    def idle(self) -> bool:
        return self.block is None

    def _durable(self) -> dict:
        # next_block: a block number is never used twice (seeded choices derive from it);
        # last_committed/last_count: what the next START tells Bob to commit or drop
        return {"next_block": self.next_block, "last_committed": self.last_committed,
                "last_count": self.last_count}

    def _restore(self, body: dict) -> None:
        self.next_block = int(_field(body, "next_block", int))  # type: ignore[arg-type]
        self.last_committed = int(_field(body, "last_committed", int))  # type: ignore[arg-type]
        self.last_count = int(_field(body, "last_count", int))  # type: ignore[arg-type]
        if self.next_block < 0 or self.last_committed >= self.next_block or self.last_count < 0:
            raise ProtocolError("inconsistent block counters")

    def start_block(self, room: int = 1 << 62) -> Output:
        """Send one block of pulses and open it (only when idle)."""
        if self.block is not None:
            raise RuntimeError("a block is already running")
        if min(self.auth.send.available_pads(), self.auth.recv.available_pads()) < 8:
            raise AuthKeyExhausted("authentication key exhausted: re-provision the link's PSK")
        self.room = room
        number = self.next_block
        self.next_block += 1
        blk = _Block(number, time.perf_counter(), self.auth.used_bits)
        blk.n_slots = self.params.pulses_for_block()
        blk.rng = self._physics(number)
        frame, blk.record = emit_block(self.params, number, blk.rng, n_slots=blk.n_slots)
        self.block = blk
        out = Output(send=[encode_quantum(frame)])
        out.send.append(self._message(START, number, {
            "n_slots": blk.n_slots, "cascade_seed": self.cascade_seed,
            "last_committed": self.last_committed, "last_count": self.last_count,
        }))
        return out

    def _on_classical(self, message: Classical) -> Output:
        blk = self.block
        if blk is None or blk.record is None:
            raise ProtocolError(f"{NAMES[message.type]} outside a block")
        body = _body(message)
        if message.type == SIFT:
            return self._on_sift(blk, body)
        if message.type == ESTIMATE:
            return self._on_estimate(blk, body)
        if message.type == CASCADE_Q:
            if blk.alice_cascade is None:
                raise ProtocolError("cascade question before estimation")
            answer = blk.alice_cascade.answer(_decode_queries(body))
            return Output(send=[self._message(CASCADE_A, blk.number, {
                "bits": _pack_bits(answer), "n": int(answer.size)})])
        if message.type == VERIFY:
            return self._on_verify(blk, body)
        if message.type == DONE:
            return self._on_done(blk, body)
        raise ProtocolError(f"unexpected {NAMES[message.type]}")

    def _on_sift(self, blk: _Block, body: dict) -> Output:
        record = blk.record
        assert record is not None
        n = _field(body, "n", int)
        slots = decode_slots(body.get("width"), body.get("slots"), n, blk.n_slots)  # type: ignore[arg-type]
        bob_basis = _unpack_bits(body.get("bases"), n)  # type: ignore[arg-type]
        assert blk.rng is not None
        cls, basis, bit, _ = alice_view(record, slots, blk.rng)
        sifted = basis == bob_basis
        signal = np.flatnonzero(sifted & (cls == SIGNAL))
        blk.sifted_signal = int(signal.size)
        # Bob's detections are fixed (he sent them): only now choose the test positions
        blk.order_seed = self.public.integer("sample positions", blk.number)
        plan = plan_frame(self.params, signal, blk.order_seed)
        reveal_mask = sifted & (cls != SIGNAL)
        sample = plan[0] if plan else np.zeros(0, np.int64)
        blk.detections = Detections(blk.n_slots, slots, basis, bit)
        self._alice_cls, self._alice_sifted = cls, sifted
        self._alice_counts = class_counts(cls, sifted)
        if plan:
            blk.frame_bits = bit[plan[1]]
            self.last_frame_slots = slots[plan[1]]
        return Output(send=[self._message(SIFT_REPLY, blk.number, {
            "bases": _pack_bits(basis), "classes": encode_classes(cls),
            "class_slots": [int(x) for x in record.class_slots],
            "revealed": _pack_bits(bit[reveal_mask]), "sample_seed": blk.order_seed,
            "sample": _pack_bits(bit[sample]),
        })])

    def _on_estimate(self, blk: _Block, body: dict) -> Output:
        errors = _field(body, "errors", list)
        if len(errors) != 3 or not all(isinstance(e, int) and e >= 0 for e in errors):  # type: ignore[arg-type]
            raise ProtocolError("bad error counts")
        if blk.frame_bits is None:
            return self._abort("too few detections for a key frame", notify=False)
        blk.stats = self._stats(self._alice_counts, list(blk.record.class_slots),  # type: ignore[union-attr]
                                errors, self.params.sample_bits)  # type: ignore[arg-type]
        blk.sample_qber = blk.stats.qber_sample
        reason, blk.bounds = decide(self.params, blk.stats, int(blk.frame_bits.size))
        if reason is not None:
            return self._abort(reason, notify=False)
        blk.alice_cascade = CascadeAlice(blk.frame_bits, self.cascade_seed)
        return Output()

    def _on_verify(self, blk: _Block, body: dict) -> Output:
        if blk.alice_cascade is None or blk.frame_bits is None or blk.bounds is None:
            raise ProtocolError("VERIFY before reconciliation")
        hash_key = _field(body, "hash_key", bytes)
        bob_hash = _field(body, "hash", bytes)
        blk.leaked = blk.alice_cascade.leaked_bits + verification.TAG_BITS
        blk.rounds = int(_field(body, "rounds", int))  # type: ignore[arg-type]
        blk.corrected_errors = int(_field(body, "corrected", int))  # type: ignore[arg-type]
        blk.alice_cascade = None  # no more parity answers: anything later would leak uncounted
        mine = verification.key_hash(blk.frame_bits, hash_key)  # type: ignore[arg-type]
        if mine != bob_hash:
            out = Output(send=[self._message(VERIFY_RESULT, blk.number, {"ok": False})])
            return out.extend(self._abort("verification hash mismatch: residual errors",
                                          notify=False))
        n = int(blk.frame_bits.size)
        length = estimation.secure_length(self.params, blk.bounds, n, blk.leaked)
        target = self.params.auth_pool_bytes
        secret_bytes = length // 8
        # top both directions back up to the target, counting the pads still to be spent on
        # this block (Alice's VERIFY_RESULT and COMMIT, Bob's DONE)
        refill_ab = min(secret_bytes,
                        max(0, target - 32 * (self.auth.send.available_pads() - 2)))
        refill_ba = min(secret_bytes - refill_ab,
                        max(0, target - 32 * (self.auth.recv.available_pads() - 1)))
        count = (secret_bytes - refill_ab - refill_ba) // KEY_BYTES
        if length <= 0:
            out = Output(send=[self._message(VERIFY_RESULT, blk.number, {"ok": False})])
            return out.extend(self._abort("no secure key after reconciliation", notify=False))
        blk.secret_len = length
        # the public Toeplitz seed must be uniformly random and independent of the physics
        seed = self.public.bits("toeplitz seed", blk.number,
                                amplification.identity_toeplitz_seed_bits(n, length))
        key_ids = self.public.key_ids(blk.number, count)
        secret = amplification.identity_toeplitz_hash(blk.frame_bits, seed, length)
        blk.pending = split_output(np.packbits(secret).tobytes(), (refill_ab, refill_ba), key_ids)
        blk.refill = (refill_ab, refill_ba)
        return Output(send=[self._message(VERIFY_RESULT, blk.number, {
            "ok": True, "length": length, "seed": _pack_bits(seed),
            "refill": [refill_ab, refill_ba],
            "key_ids": uuid_bytes(key_ids),
        })])

    def _on_done(self, blk: _Block, body: dict) -> Output:
        if blk.pending is None:
            raise ProtocolError("DONE before VERIFY_RESULT")
        peer_room = _field(body, "room", int)
        self.peer_room = int(peer_room)  # type: ignore[arg-type]
        to_ab, to_ba, keys = blk.pending
        count = max(0, min(len(keys), self.room, self.peer_room))
        out = Output(send=[self._message(COMMIT, blk.number, {"count": count})])
        self.auth.send.refill(to_ab)
        self.auth.recv.refill(to_ba)
        self.last_committed, self.last_count = blk.number, count
        if count:
            out.keys.append(keys[:count])
        self.auth.reset_transcripts()
        out.reports.append(self._report(blk, aborted=False, reason=None, keys=count,
                                        refilled=8 * (len(to_ab) + len(to_ba))))
        self.block = None
        return out


class BobEndpoint(_Endpoint):
    """Bob: detects, drives Cascade, commits what Alice commits."""

    role = "bob"
    _salt = 1

    def __init__(self, params: LinkParams, psk: bytes | None = None, *,
                 auth: ChannelAuth | None = None) -> None:
        super().__init__(params, psk, auth=auth)
        self.frames: dict[int, PulseFrame] = {}
        self.pending: _Block | None = None
        self.room = 1 << 62
        self._bob_bits: np.ndarray | None = None

    def _durable(self) -> dict:
        # a block Bob said DONE to: Alice may have committed it, her next START tells
        blk = self.pending
        if blk is None or blk.pending is None:
            return {"pending": None}
        to_ab, to_ba, keys = blk.pending
        return {"pending": {
            "block": blk.number, "secret_bits": blk.secret_len, "ab": to_ab, "ba": to_ba,
            "ids": uuid_bytes([k for k, _ in keys]),
            "keys": b"".join(key for _, key in keys)}}

    def _restore(self, body: dict) -> None:
        saved = body.get("pending")
        if saved is None:
            return
        if not isinstance(saved, dict):
            raise ProtocolError("bad pending block")
        ids = _field(saved, "ids", bytes)
        material = _field(saved, "keys", bytes)
        count = len(ids) // 16  # type: ignore[arg-type]
        if len(ids) % 16 or len(material) != KEY_BYTES * count:  # type: ignore[arg-type]
            raise ProtocolError("pending keys do not match their key_IDs")
        keys = [(key_id, material[KEY_BYTES * i: KEY_BYTES * (i + 1)])  # type: ignore[index]
                for i, key_id in enumerate(uuid_texts(ids))]  # type: ignore[arg-type]
        blk = _Block(int(_field(saved, "block", int)), time.perf_counter(),  # type: ignore[arg-type]
                     self.auth.used_bits)
        blk.secret_len = int(_field(saved, "secret_bits", int))  # type: ignore[arg-type]
        blk.pending = (_field(saved, "ab", bytes), _field(saved, "ba", bytes), keys)  # type: ignore[assignment]
        self.pending = blk

    def reprovision(self, psk: bytes) -> None:
        super().reprovision(psk)
        if self.pending is not None and self.pending.pending is not None:
            self.pending.pending = (b"", b"", self.pending.pending[2])

    def _abort(self, reason: str, *, notify: bool) -> Output:
        if self.block is not None and self.block is self.pending:
            # VERIFY_RESULT was good and we said DONE: whether the keys exist is now Alice's
            # call, which her next START (or COMMIT) tells us; keep them pending until then
            self.block = None
            self.auth.reset_transcripts()
            return Output()
        return super()._abort(reason, notify=notify)

    def _on_quantum(self, frame: bytes) -> Output:
        pulses = decode_quantum(frame)
        self.frames = {pulses.block: pulses}  # only the newest block's frame is kept
        return Output()

    def receive(self, frame: bytes) -> Output:
        if frame[:1] == b"C" and len(frame) > 1 + _HEADER.size:
            kind = frame[2]
            block = int.from_bytes(frame[3:7], "big")
            if kind == START and (self.block is None or self.block.number != block):
                return self._start(frame, block)
        return super().receive(frame)

    def _start(self, frame: bytes, number: int) -> Output:
        out = Output()
        if self.block is not None:  # a START for a new block ends a block we still had open
            out.extend(self._abort("superseded by a new block", notify=False))
        try:
            message = Classical.parse(frame)
        except ProtocolError:
            return out
        self.block = _Block(number, time.perf_counter(), self.auth.used_bits)
        try:
            self._accept(message)
            body = _body(message)
        except (AuthError, ProtocolError) as exc:
            return out.extend(self._abort(f"START: {exc}", notify=True))
        except AuthKeyExhausted as exc:
            return out.extend(self._abort(str(exc), notify=False))
        out.extend(self._resolve_pending(body))
        try:
            return out.extend(self._on_start(self.block, body))
        except (ProtocolError, ValueError) as exc:
            return out.extend(self._abort(f"START: {exc}", notify=True))

    def _resolve_pending(self, body: dict) -> Output:
        out = Output()
        pending, self.pending = self.pending, None
        if pending is None or pending.pending is None:
            return out
        if body.get("last_committed") == pending.number and isinstance(body.get("last_count"),
                                                                        int):
            out.extend(self._commit(pending, int(body["last_count"])))
        return out

    def _commit(self, blk: _Block, count: int) -> Output:
        assert blk.pending is not None
        to_ab, to_ba, keys = blk.pending
        count = max(0, min(count, len(keys)))
        self.auth.recv.refill(to_ab)
        self.auth.send.refill(to_ba)
        out = Output()
        if count:
            out.keys.append(keys[:count])
        out.reports.append(self._report(blk, aborted=False, reason=None, keys=count,
                                        refilled=8 * (len(to_ab) + len(to_ba))))
        blk.pending = None
        return out

    def _on_start(self, blk: _Block, body: dict) -> Output:
        blk.n_slots = int(_field(body, "n_slots", int))  # type: ignore[arg-type]
        self.cascade_seed = int(_field(body, "cascade_seed", int))  # type: ignore[arg-type]
        pulses = self.frames.pop(blk.number, None)
        if pulses is None or pulses.n_slots != blk.n_slots:
            raise ProtocolError("no matching quantum frame for this block")
        det = detect(self.params, pulses, self._physics(blk.number))
        blk.detections = det
        width, deltas = encode_slots(det.slot)
        return Output(send=[self._message(SIFT, blk.number, {
            "n": int(det.slot.size), "width": width, "slots": deltas,
            "bases": _pack_bits(det.basis)})])

    def _on_classical(self, message: Classical) -> Output:
        body = _body(message)
        if message.type == COMMIT:
            return self._on_commit(message.block, body)
        blk = self.block
        if blk is None:
            raise ProtocolError(f"{NAMES[message.type]} outside a block")
        if message.type == SIFT_REPLY:
            return self._on_sift_reply(blk, body)
        if message.type == CASCADE_A:
            if blk.bob_cascade is None or blk.bob_cascade.result is not None:
                raise ProtocolError("cascade answer without an open question")
            n = _field(body, "n", int)
            bits = _unpack_bits(body.get("bits"), n)  # type: ignore[arg-type]
            queries = blk.bob_cascade.receive(bits)
            return self._after_cascade_step(blk, queries)
        if message.type == VERIFY_RESULT:
            return self._on_verify_result(blk, body)
        raise ProtocolError(f"unexpected {NAMES[message.type]}")

    def _on_sift_reply(self, blk: _Block, body: dict) -> Output:
        det = blk.detections
        assert det is not None
        n = int(det.slot.size)
        basis = _unpack_bits(body.get("bases"), n)
        cls = decode_classes(body.get("classes"), n)
        class_slots = _field(body, "class_slots", list)
        if len(class_slots) != 3 or not all(isinstance(c, int) and c >= 0 for c in class_slots):  # type: ignore[arg-type]
            raise ProtocolError("bad per-class pulse counts")
        sifted = basis == det.basis
        signal = np.flatnonzero(sifted & (cls == SIGNAL))
        blk.sifted_signal = int(signal.size)
        blk.order_seed = int(_field(body, "sample_seed", int))  # type: ignore[arg-type]
        plan = plan_frame(self.params, signal, blk.order_seed)
        reveal = np.flatnonzero(sifted & (cls != SIGNAL))
        revealed = _unpack_bits(body.get("revealed"), int(reveal.size))
        sample_idx = plan[0] if plan else np.zeros(0, np.int64)
        sample = _unpack_bits(body.get("sample"), int(sample_idx.size))
        wrong = revealed != det.bit[reveal]
        rcls = cls[reveal]
        errors = [int((sample != det.bit[sample_idx]).sum()), int(wrong[rcls == DECOY].sum()),
                  int(wrong[rcls == VACUUM].sum())]
        out = Output(send=[self._message(ESTIMATE, blk.number, {"errors": errors})])
        if plan is None:
            return out.extend(self._abort("too few detections for a key frame", notify=False))
        blk.frame_bits = det.bit[plan[1]]
        blk.stats = self._stats(class_counts(cls, sifted), class_slots, errors,  # type: ignore[arg-type]
                                self.params.sample_bits)
        blk.sample_qber = blk.stats.qber_sample
        reason, blk.bounds = decide(self.params, blk.stats, int(blk.frame_bits.size))
        if reason is not None:
            return out.extend(self._abort(reason, notify=False))
        blk.bob_cascade = CascadeBob(blk.frame_bits, max(blk.sample_qber, 1e-3),
                                     self.cascade_seed)
        return out.extend(self._after_cascade_step(blk, blk.bob_cascade.start()))

    def _after_cascade_step(self, blk: _Block, queries: list[ParityQuery] | None) -> Output:
        cascade = blk.bob_cascade
        assert cascade is not None
        if queries is not None:
            return Output(send=[self._message(CASCADE_Q, blk.number,
                                              _encode_queries(queries))])
        result = cascade.result
        assert result is not None
        blk.frame_bits = result.bits
        blk.leaked = result.leaked_bits + verification.TAG_BITS
        blk.rounds = result.rounds
        blk.corrected_errors = result.corrected
        hash_key = self.public.draw("verification hash key", blk.number,
                                    verification.HASH_KEY_BYTES)
        return Output(send=[self._message(VERIFY, blk.number, {
            "hash_key": hash_key, "hash": verification.key_hash(result.bits, hash_key),
            "rounds": result.rounds, "corrected": result.corrected})])

    def _on_verify_result(self, blk: _Block, body: dict) -> Output:
        if not body.get("ok"):
            return self._abort("verification failed or no secure key (Alice)", notify=False)
        if blk.frame_bits is None or blk.bounds is None:
            raise ProtocolError("VERIFY_RESULT before reconciliation")
        length = int(_field(body, "length", int))  # type: ignore[arg-type]
        n = int(blk.frame_bits.size)
        expected = estimation.secure_length(self.params, blk.bounds, n, blk.leaked)
        if length != expected:
            raise ProtocolError(f"key length {length} differs from ours ({expected})")
        seed = _unpack_bits(body.get("seed"), amplification.identity_toeplitz_seed_bits(n, length))
        refill = _field(body, "refill", list)
        raw_ids = _field(body, "key_ids", bytes)
        if (len(refill) != 2 or not all(isinstance(r, int) and r >= 0 for r in refill)  # type: ignore[arg-type]
                or len(raw_ids) % 16):  # type: ignore[arg-type]
            raise ProtocolError("bad refill amounts or key_IDs")
        key_ids = uuid_texts(raw_ids)  # type: ignore[arg-type]
        if sum(refill) + KEY_BYTES * len(key_ids) > length // 8:  # type: ignore[arg-type]
            raise ProtocolError("more output claimed than the key length allows")
        blk.secret_len = length
        secret = amplification.identity_toeplitz_hash(blk.frame_bits, seed, length)
        blk.pending = split_output(np.packbits(secret).tobytes(), tuple(refill), key_ids)  # type: ignore[arg-type]
        self.pending = blk
        out = Output(send=[self._message(DONE, blk.number, {"room": int(self.room)})])
        self.auth.reset_transcripts()
        return out

    def _on_commit(self, number: int, body: dict) -> Output:
        if self.pending is None or self.pending.number != number:
            raise ProtocolError("COMMIT without a matching pending block")
        pending, self.pending = self.pending, None
        self.block = None
        return self._commit(pending, int(_field(body, "count", int)))  # type: ignore[arg-type]
