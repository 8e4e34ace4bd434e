"""Call signalling and call keys, sans-I/O.

Signalling messages travel inside the conversation's end-to-end session (so they are
already sealed by the ratchet): offer, ringing, answer, decline, busy, hang-up, missed,
and a rekey pair. :class:`Call` is one call's state machine; it never touches the network,
the KME or the clock: the messenger feeds it messages, user actions and the time, and
carries out what it returns (messages to send, keys to install, the end of the call).

Keys. Every epoch (the call's start, then each rekey) makes two base keys, one per
direction, each from the combiner (keysource.mix)::

    base = mix(MixInputs(qkd = fresh QKD keys named in the offer or rekey,
                         pq  = ML-KEM-768 shared secret (caller's fresh key pair,
                               callee's encapsulation in the answer),
                         ecdh = X25519 shared secret (fresh key pairs on both sides)),
               transcript = Transcript("qsecret/call/v1") + the session secret, call id,
                            epoch, both public keys, the ciphertext and the QKD key_IDs,
               purpose = "call/caller-to-callee" or "call/callee-to-caller")

so a call key needs QKD, ML-KEM-768 and X25519 all broken, and the session secret binds it
to this conversation's current ratchet state. The session secret is exported from the
ratchet message that carried the offer (:func:`call_secret`, client.protocol.exporter): the
caller gets it when the offer is sealed, the callee when it is opened, and both hold the
same 32 bytes whatever else is in flight, because they come from that one message's key.
Nothing secret travels in the offer itself (version 1 carried a random secret beside it:
such an offer is refused with "update qsecret", see :data:`OUTDATED`). The label
is the mix's (``QKD+ML-KEM-768+X25519``, or degraded without QKD under policy ``prefer``).
KIDs: epoch ``e`` seals caller -> callee frames under KID ``2e``, callee -> caller under
``2e + 1``. Note the ML-KEM encapsulation travels in the *answer* (and the rekey's
acknowledgement), to a key pair the offer carries: each call and each rekey gets a fresh
pair, so nothing long-lived can open a recorded call.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass
from typing import Any

import cbor2

from client.protocol.exporter import SECRET_BYTES, export
from keysource import pq
from keysource.mix import MixInputs, QkdPolicy, Transcript, mix

VERSION = 2  # 2: the session secret is exported from the offer's ratchet message
LEGACY_VERSION = 1  # decoded only to refuse it clearly (its answer is encoded as version 1)
EXPORTER_LABEL = "qsecret call v1"
OUTDATED = "update qsecret: the caller's version is too old for calls"
CALL_ID_BYTES = 16
RING_TIMEOUT_S = 30.0  # an offer not answered by then is a missed call
REKEY_EVERY_S = 60.0
REKEY_GRACE_S = 2.0  # an old epoch's receive key is kept this long after the new one
MIN_ASKED_REKEY_GAP_S = 1.0  # a callee's rekey_ask within this of the last rekey waits
KEM = "ML-KEM-768"
TRANSCRIPT_CONTEXT = "qsecret/call/v1"
PURPOSE_TO_CALLEE = "call/caller-to-callee"
PURPOSE_TO_CALLER = "call/callee-to-caller"


class SignallingError(ValueError):
    """A call message that is malformed or does not fit the call's state."""


class Kind(enum.Enum):
    OFFER = "offer"
    RINGING = "ringing"
    ANSWER = "answer"
    DECLINE = "decline"
    BUSY = "busy"
    HANGUP = "hangup"
    MISSED = "missed"
    REKEY = "rekey"
    REKEY_ACK = "rekey_ack"
    REKEY_ASK = "rekey_ask"  # callee -> caller: please rekey now (the caller drives rekeys)


@dataclass(frozen=True, repr=False)
class CallMessage:
    """One signalling message; the fields a kind does not use stay empty."""

    kind: Kind
    call_id: bytes
    epoch: int = 0
    kem_public: bytes = b""  # offer, rekey
    kem_ciphertext: bytes = b""  # answer, rekey_ack
    x25519_public: bytes = b""  # offer, answer, rekey, rekey_ack
    qkd_key_ids: tuple[str, ...] = ()  # offer, rekey
    reason: str = ""  # hangup, missed, decline (why it was refused, e.g. "not a contact")
    version: int = VERSION  # LEGACY_VERSION: an old client's (see OUTDATED)

    def __repr__(self) -> str:
        return f"CallMessage({self.kind.value}, {self.call_id.hex()[:8]}, epoch {self.epoch})"

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": self.version, "k": self.kind.value, "c": self.call_id,
                                "e": self.epoch}
        for key, value in (("kp", self.kem_public), ("kc", self.kem_ciphertext),
                           ("xp", self.x25519_public), ("q", list(self.qkd_key_ids)),
                           ("r", self.reason)):
            if value:
                body[key] = value
        return cbor2.dumps(body)

    @classmethod
    def decode(cls, data: bytes) -> CallMessage:
        try:
            body = cbor2.loads(data)
        except Exception as exc:  # cbor2 raises several types on bad input
            raise SignallingError(f"call message does not decode: {type(exc).__name__}") \
                from None
        if not isinstance(body, dict) or body.get("v") not in (VERSION, LEGACY_VERSION):
            raise SignallingError("call message version not supported: update qsecret")
        try:
            kind = Kind(body.get("k"))
        except ValueError:
            raise SignallingError(f"unknown call message {body.get('k')!r}") from None
        call_id, epoch = body.get("c"), body.get("e")
        if not isinstance(call_id, bytes) or len(call_id) != CALL_ID_BYTES:
            raise SignallingError("call message without a valid call id")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch < 1 << 31:
            raise SignallingError("call message without a valid epoch")
        ids = body.get("q", [])
        if not isinstance(ids, list) or not all(isinstance(i, str) and len(i) <= 64
                                                for i in ids) or len(ids) > 16:
            raise SignallingError("call message with malformed QKD key_IDs")
        message = cls(kind, call_id, epoch, _bytes(body, "kp"), _bytes(body, "kc"),
                      _bytes(body, "xp"), tuple(ids), _text(body, "r"), body["v"])
        _check_fields(message)
        return message


def call_secret(message_secret: bytes, call_id: bytes) -> bytes:
    """The call's session secret, from the exporter secret of the ratchet message that
    carried its offer (client.protocol.exporter): the same at both ends."""
    if len(call_id) != CALL_ID_BYTES:
        raise SignallingError(f"a call id is {CALL_ID_BYTES} bytes")
    if len(message_secret) != SECRET_BYTES:
        raise SignallingError("the offer's message has no exporter secret")
    return export(message_secret, EXPORTER_LABEL, call_id)


def refuse_outdated(offer: CallMessage, reason: str = OUTDATED) -> CallMessage:
    """The decline an old client's offer gets: in its own version, so it can read why."""
    return CallMessage(Kind.DECLINE, offer.call_id, reason=reason, version=offer.version)


def declined(reason: str) -> str:
    """How a declined call ends: "declined", or "declined: not a contact"."""
    return f"declined: {reason}" if reason else "declined"


def _bytes(body: dict[Any, Any], key: str) -> bytes:
    value = body.get(key, b"")
    if not isinstance(value, bytes) or len(value) > 4096:
        raise SignallingError(f"call message field {key!r} is malformed")
    return value


def _text(body: dict[Any, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str) or len(value) > 200:
        raise SignallingError(f"call message field {key!r} is malformed")
    return value


def _check_fields(message: CallMessage) -> None:
    kem = pq.get_kem(KEM)
    need_pk = message.kind in (Kind.OFFER, Kind.REKEY)
    need_ct = message.kind in (Kind.ANSWER, Kind.REKEY_ACK)
    if need_pk and len(message.kem_public) != kem.sizes.public_key:
        raise SignallingError(f"{message.kind.value} without an {KEM} public key")
    if need_ct and len(message.kem_ciphertext) != kem.sizes.ciphertext:
        raise SignallingError(f"{message.kind.value} without an {KEM} ciphertext")
    if (need_pk or need_ct) and len(message.x25519_public) != 32:
        raise SignallingError(f"{message.kind.value} without an X25519 public key")


# ---------------------------------------------------------------- keys


@dataclass(frozen=True, repr=False)
class EpochKeys:
    """The two base keys of one epoch, and which KID each goes under."""

    epoch: int
    send_kid: int
    send_key: bytes
    receive_kid: int
    receive_key: bytes
    label: str

    def __repr__(self) -> str:
        return f"EpochKeys(epoch={self.epoch}, {self.label})"


def derive_epoch_keys(*, caller: bool, call_id: bytes, epoch: int, session_secret: bytes,
                      qkd: bytes | None, qkd_key_ids: tuple[str, ...], kem_public: bytes,
                      kem_ciphertext: bytes, kem_secret: bytes, x25519_caller: bytes,
                      x25519_callee: bytes, x25519_secret: bytes,
                      policy: QkdPolicy = QkdPolicy.PREFER) -> EpochKeys:
    """Both directions' base keys of ``epoch``, seen from the caller or the callee."""
    transcript = (Transcript(TRANSCRIPT_CONTEXT).add("session", session_secret)
                  .add("call", call_id).add("epoch", struct.pack(">I", epoch))
                  .add("kem-public", kem_public).add("kem-ciphertext", kem_ciphertext)
                  .add("x25519-caller", x25519_caller).add("x25519-callee", x25519_callee)
                  .add("qkd-key-ids", ",".join(qkd_key_ids).encode()).to_bytes())
    inputs = MixInputs(qkd=qkd, pq=kem_secret, ecdh=x25519_secret, pq_alg=KEM)

    to_callee = mix(inputs, transcript=transcript, purpose=PURPOSE_TO_CALLEE, policy=policy)
    to_caller = mix(inputs, transcript=transcript, purpose=PURPOSE_TO_CALLER, policy=policy)
    send, receive = (to_callee, to_caller) if caller else (to_caller, to_callee)
    send_kid, receive_kid = (2 * epoch, 2 * epoch + 1) if caller else (2 * epoch + 1, 2 * epoch)
    return EpochKeys(epoch, send_kid, send.key, receive_kid, receive.key, send.label)


def _check_secret(session_secret: bytes) -> None:
    if len(session_secret) != SECRET_BYTES:
        raise SignallingError(f"a call's session secret is {SECRET_BYTES} bytes")


# ---------------------------------------------------------------- the state machine


class State(enum.Enum):
    OFFERING = "offering"  # caller: offer sent, no answer yet
    RINGING = "ringing"  # caller: the callee's device rings; callee: ringing here
    ACTIVE = "active"
    ENDED = "ended"


@dataclass(frozen=True)
class Send:
    message: CallMessage


@dataclass(frozen=True)
class InstallKeys:
    """Seal from now on with ``keys.send_*``; accept ``keys.receive_*`` (and keep the
    previous receive KID until ``retire_at``, then retire it)."""

    keys: EpochKeys
    retire_kid: int | None
    retire_at: float


@dataclass(frozen=True)
class NeedQkd:
    """The machine wants fresh QKD keys for a rekey: fetch them, then call :meth:`Call.rekey`."""

    epoch: int


@dataclass(frozen=True)
class Ended:
    reason: str  # hung up, declined, busy, missed, failed: ...
    by_peer: bool


Effect = Send | InstallKeys | NeedQkd | Ended


@dataclass(frozen=True, repr=False)
class QkdKeys:
    key_ids: tuple[str, ...] = ()
    material: bytes | None = None  # None: no QKD keys (degraded under 'prefer')


@dataclass
class _Pending:
    """The caller's half of an epoch not yet answered: fresh key pairs and QKD keys."""

    epoch: int
    kem: pq.KeyPair
    x25519: pq.KeyPair
    qkd: QkdKeys


@dataclass
class Call:
    """One call, seen from one side. Build it with :meth:`outgoing` or :meth:`incoming`."""

    call_id: bytes
    caller: bool
    session_secret: bytes  # the caller's: b"" until bind_session (the offer is sealed)
    policy: QkdPolicy
    state: State
    started: float
    epoch: int = -1
    keys: EpochKeys | None = None
    rekeys: int = 0
    next_rekey: float = 0.0
    _pending: _Pending | None = None
    _offer: CallMessage | None = None
    answered_at: float | None = None
    rekey_every: float = REKEY_EVERY_S  # the caller's rekey period
    keyed_at: float = 0.0  # when the current epoch's keys were installed

    # -- starting

    @classmethod
    def outgoing(cls, qkd: QkdKeys, now: float, policy: QkdPolicy = QkdPolicy.PREFER,
                 call_id: bytes | None = None, rekey_every: float = REKEY_EVERY_S
                 ) -> tuple[Call, list[Effect]]:
        """``call_id``: chosen beforehand (the messenger opens the media stream under it
        first, to learn at once whether the peer is online); fresh by default.
        ``rekey_every``: seconds between rekeys (at least 1). Once the offer is sealed,
        give the call its session secret with :meth:`bind_session`."""
        if rekey_every < 1.0:
            raise SignallingError("rekeys at most once a second")
        call_id = os.urandom(CALL_ID_BYTES) if call_id is None else call_id
        if len(call_id) != CALL_ID_BYTES:
            raise SignallingError(f"a call id is {CALL_ID_BYTES} bytes")
        call = cls(call_id, True, b"", policy, State.OFFERING, now, rekey_every=rekey_every)
        offer = call._propose(Kind.OFFER, 0, qkd)
        return call, [Send(offer)]

    @classmethod
    def incoming(cls, offer: CallMessage, session_secret: bytes, now: float,
                 policy: QkdPolicy = QkdPolicy.PREFER) -> tuple[Call, list[Effect]]:
        """``session_secret``: :func:`call_secret` of the message the offer came in."""
        if offer.kind is not Kind.OFFER or offer.epoch != 0:
            raise SignallingError(f"a call starts with an offer, not {offer.kind.value}")
        if offer.version != VERSION:
            raise SignallingError(f"a version {offer.version} call offer: {OUTDATED}")
        _check_secret(session_secret)
        call = cls(offer.call_id, False, session_secret, policy, State.RINGING, now)
        call._offer = offer
        return call, [Send(CallMessage(Kind.RINGING, offer.call_id))]

    def bind_session(self, session_secret: bytes) -> None:
        """The caller's session secret: :func:`call_secret` of the sealed offer's message."""
        if not self.caller or self.session_secret:
            raise SignallingError("only a caller binds its session secret, once")
        _check_secret(session_secret)
        self.session_secret = session_secret

    def _propose(self, kind: Kind, epoch: int, qkd: QkdKeys) -> CallMessage:
        kem, x = pq.get_kem(KEM).generate_keypair(), pq.x25519_keypair()
        self._pending = _Pending(epoch, kem, x, qkd)
        return CallMessage(kind, self.call_id, epoch, kem_public=kem.public_key,
                           x25519_public=x.public_key, qkd_key_ids=qkd.key_ids)

    # -- the user

    def answer(self, qkd: QkdKeys, now: float) -> list[Effect]:
        """The callee accepts (``qkd``: the keys the offer named, fetched with dec_keys)."""
        if self.caller or self.state is not State.RINGING or self._offer is None:
            raise SignallingError("only a ringing incoming call can be answered")
        reply, keys = self._accept(self._offer, qkd, Kind.ANSWER)
        self.state = State.ACTIVE
        self.answered_at = now
        return [self._install(keys, now), Send(reply)]

    def decline(self, busy: bool = False, reason: str = "") -> list[Effect]:
        """Decline (``busy``: another call is going on; ``reason``: why the call was refused,
        shown to the caller, e.g. "not a contact")."""
        if self.caller or self.state is not State.RINGING:
            raise SignallingError("only a ringing incoming call can be declined")
        kind = Kind.BUSY if busy else Kind.DECLINE
        ended = "busy" if busy else declined(reason)
        return [Send(CallMessage(kind, self.call_id, reason="" if busy else reason)),
                *self._end(ended, by_peer=False)]

    def hang_up(self, reason: str = "hung up") -> list[Effect]:
        if self.state is State.ENDED:
            return []
        return [Send(CallMessage(Kind.HANGUP, self.call_id, reason=reason)),
                *self._end(reason, by_peer=False)]

    def lost(self, reason: str) -> list[Effect]:
        """The call ended without a word from the peer (its connection went away)."""
        if self.state is State.ENDED:
            return []
        return self._end(reason, by_peer=True)

    def request_rekey(self) -> list[Effect]:
        """A rekey now, on demand. The caller drives every rekey: at the caller this returns
        NeedQkd (fetch fresh keys and call :meth:`rekey`); at the callee it sends a
        ``rekey_ask``, which makes the caller start one. Nothing while one is under way or the
        call is not active."""
        if self.state is not State.ACTIVE:
            return []
        if not self.caller:
            return [Send(CallMessage(Kind.REKEY_ASK, self.call_id, self.epoch))]
        if self._pending is not None:
            return []
        return [NeedQkd(self.epoch + 1)]

    def rekey(self, qkd: QkdKeys) -> list[Effect]:
        """Start the next epoch with fresh QKD keys (fetched after :class:`NeedQkd`)."""
        if not self.caller or self.state is not State.ACTIVE or self._pending is not None:
            return []
        return [Send(self._propose(Kind.REKEY, self.epoch + 1, qkd))]

    # -- the peer

    def receive(self, message: CallMessage, now: float, qkd: QkdKeys | None = None
                ) -> list[Effect]:
        """A message of this call from the peer (``qkd``: for a REKEY, the keys it names)."""
        if message.call_id != self.call_id:
            raise SignallingError("a message of another call")
        if self.state is State.ENDED:
            return []
        kind = message.kind
        if kind is Kind.HANGUP:
            return self._end(message.reason or "hung up", by_peer=True)
        if kind is Kind.MISSED and not self.caller and self.state is State.RINGING:
            return self._end("missed", by_peer=True)
        if self.caller:
            if kind is Kind.RINGING and self.state is State.OFFERING:
                self.state = State.RINGING
                return []
            if kind in (Kind.DECLINE, Kind.BUSY) and self.state is not State.ACTIVE:
                why = declined(message.reason) if kind is Kind.DECLINE else "busy"
                return self._end(why, by_peer=True)
            if kind is Kind.ANSWER and self.state in (State.OFFERING, State.RINGING):
                keys = self._complete(message)
                self.state = State.ACTIVE
                self.answered_at = now
                return [self._install(keys, now)]
            if kind is Kind.REKEY_ACK and self.state is State.ACTIVE:
                return [self._install(self._complete(message), now)]
            if kind is Kind.REKEY_ASK and self.state is State.ACTIVE:
                if message.epoch != self.epoch:  # asked before our last rekey: done
                    return []
                if now - self.keyed_at < MIN_ASKED_REKEY_GAP_S:  # too soon: tick() does it
                    # then (a peer cannot make us spend QKD keys faster than once a second)
                    self.next_rekey = min(self.next_rekey,
                                          self.keyed_at + MIN_ASKED_REKEY_GAP_S)
                    return []
                return self.request_rekey()
        elif kind is Kind.REKEY and self.state is State.ACTIVE:
            if message.epoch != self.epoch + 1:
                raise SignallingError(f"rekey to epoch {message.epoch} after {self.epoch}")
            reply, keys = self._accept(message, qkd or QkdKeys(), Kind.REKEY_ACK)
            return [self._install(keys, now), Send(reply)]
        raise SignallingError(f"{kind.value} does not fit a call that is {self.state.value}")

    def _accept(self, proposal: CallMessage, qkd: QkdKeys, kind: Kind
                ) -> tuple[CallMessage, EpochKeys]:
        """The callee's side of an epoch: encapsulate, agree, derive."""
        if tuple(qkd.key_ids) != proposal.qkd_key_ids:
            raise SignallingError("the QKD keys given are not the ones the caller named")
        ciphertext, kem_secret = pq.get_kem(KEM).encapsulate(proposal.kem_public)
        x = pq.x25519_keypair()
        keys = derive_epoch_keys(
            caller=False, call_id=self.call_id, epoch=proposal.epoch,
            session_secret=self.session_secret, qkd=qkd.material,
            qkd_key_ids=proposal.qkd_key_ids, kem_public=proposal.kem_public,
            kem_ciphertext=ciphertext, kem_secret=kem_secret,
            x25519_caller=proposal.x25519_public, x25519_callee=x.public_key,
            x25519_secret=pq.x25519_shared(x.secret_key, proposal.x25519_public),
            policy=self.policy)
        reply = CallMessage(kind, self.call_id, proposal.epoch, kem_ciphertext=ciphertext,
                            x25519_public=x.public_key)
        return reply, keys

    def _complete(self, reply: CallMessage) -> EpochKeys:
        """The caller's side of an epoch, once the callee's half arrived."""
        pending = self._pending
        if pending is None or reply.epoch != pending.epoch:
            raise SignallingError(f"no epoch {reply.epoch} is waiting for its answer")
        if not self.session_secret:
            raise SignallingError("an answer before the offer was sealed")
        self._pending = None
        kem_secret = pq.get_kem(KEM).decapsulate(pending.kem.secret_key, reply.kem_ciphertext)
        return derive_epoch_keys(
            caller=True, call_id=self.call_id, epoch=pending.epoch,
            session_secret=self.session_secret, qkd=pending.qkd.material,
            qkd_key_ids=pending.qkd.key_ids, kem_public=pending.kem.public_key,
            kem_ciphertext=reply.kem_ciphertext, kem_secret=kem_secret,
            x25519_caller=pending.x25519.public_key, x25519_callee=reply.x25519_public,
            x25519_secret=pq.x25519_shared(pending.x25519.secret_key, reply.x25519_public),
            policy=self.policy)

    def _install(self, keys: EpochKeys, now: float) -> InstallKeys:
        old = self.keys.receive_kid if self.keys is not None else None
        if self.keys is not None:
            self.rekeys += 1
        self.keys, self.epoch = keys, keys.epoch
        self.next_rekey = now + self.rekey_every
        self.keyed_at = now
        return InstallKeys(keys, old, now + REKEY_GRACE_S)

    # -- time

    def tick(self, now: float) -> list[Effect]:
        """Timeouts: an unanswered offer becomes a missed call; the caller rekeys on time."""
        if self.state in (State.OFFERING, State.RINGING) and now - self.started >= \
                RING_TIMEOUT_S:
            if self.caller:
                return [Send(CallMessage(Kind.MISSED, self.call_id, reason="no answer")),
                        *self._end("no answer", by_peer=False)]
            return self._end("missed", by_peer=True)
        if (self.caller and self.state is State.ACTIVE and now >= self.next_rekey
                and self._pending is None):
            self.next_rekey = now + self.rekey_every  # asked once per period
            return [NeedQkd(self.epoch + 1)]
        return []

    def _end(self, reason: str, *, by_peer: bool) -> list[Effect]:
        self.state = State.ENDED
        self._pending = None
        return [Ended(reason, by_peer)]


__all__ = ["OUTDATED", "CallMessage", "Call", "Effect", "Ended", "EpochKeys", "InstallKeys",
           "Kind", "NeedQkd", "QkdKeys", "Send", "SignallingError", "State", "call_secret",
           "declined", "derive_epoch_keys", "refuse_outdated"]
