"""A conversation with one peer: the API the CLI and TUI build on.

Sans-I/O: every method takes and returns bytes and events; the I/O layer moves
the bytes (relay), fetches QKD keys (KME SAE client) and persists state (store).

Sending::

    plan = session.send_plan()                  # does the next message turn the ratchet?
    keys = kme.get_enc_keys(session.peer_sae_id, plan.qkd_keys) if plan.qkd_keys else None
    out = session.encrypt(b"hi", qkd=keys)      # -> Outgoing(wire, message_id, ...)
    store.commit_outgoing(...)                  # state + outbox in one transaction
    relay.send(out.wire)                        # only then

Receiving::

    ids = session.qkd_needed(wire)              # key_IDs named by the header
    keys = kme.get_dec_keys(session.peer_sae_id, ids) if ids else None
    events = session.decrypt(wire, qkd=keys)    # [Message | Deferred | Discarded]

A responder creates its session from the first message with :meth:`Session.accept`
(``Session.peek_initial(wire)`` says who it is from and which QKD keys to fetch).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import cbor2

from keysource.mix import QkdPolicy

from .bundle import PrekeyBundle, PrekeySecrets
from .errors import MalformedMessage, ProtocolError, QkdMissing, UnsupportedVersion
from .handshake import HandshakeRandomness, InitialMessage, initiate, respond
from .identity import Identity, PublicIdentity
from .otp import T_OTP, OtpPad
from .qkd import QkdKeys
from .ratchet import (
    T_PREKEY,
    Deferred,
    Discarded,
    Ratchet,
    RatchetConfig,
    Received,
    SendPlan,
    parse_header,
)

MODE_RATCHET = "ratchet"
MODE_OTP = "otp"
STATE_VERSION = 1


def wire_id(wire: bytes) -> str:
    """A stable id of wire bytes, for de-duplication and the outbox."""
    return hashlib.sha256(wire).hexdigest()[:32]


@dataclass(frozen=True)
class Outgoing:
    """A sealed message ready for the transport (persist the session first)."""

    wire: bytes
    message_id: str
    turn: bool
    sources: tuple[str, ...]
    degraded: bool
    otp: bool
    # the message's exporter secret (client.protocol.exporter): keys bound to this very
    # message, e.g. a call's; never stored
    exporter: bytes = field(default=b"", repr=False)

    @property
    def label(self) -> str:
        return _label(self.sources, self.degraded, self.otp)


@dataclass(frozen=True)
class Message:
    """A decrypted message."""

    plaintext: bytes
    message_id: str
    sources: tuple[str, ...]
    degraded: bool
    otp: bool = False
    exporter: bytes = field(default=b"", repr=False)  # as Outgoing.exporter

    @property
    def label(self) -> str:
        return _label(self.sources, self.degraded, self.otp)

    def __repr__(self) -> str:  # never print plaintext
        return f"Message(id={self.message_id!r}, bytes={len(self.plaintext)}, {self.label})"


SessionEvent = Message | Deferred | Discarded


def _label(sources: tuple[str, ...], degraded: bool, otp: bool) -> str:
    if otp:
        return "QKD one-time pad"
    text = "+".join(sources)
    return f"{text} (degraded: no QKD)" if degraded else text


@dataclass(frozen=True)
class SessionStatus:
    mode: str
    handshake: str
    sending: str
    receiving: str
    degraded: bool
    send_turn: int
    recv_turn: int
    otp_send_bytes: int
    otp_recv_bytes: int
    pending: int


class Session:
    """One end-to-end encrypted conversation (mutable; persist :meth:`to_bytes`)."""

    def __init__(self, ratchet: Ratchet, *, own_handle: str, peer_handle: str,
                 peer_identity: PublicIdentity, peer_sae_id: str,
                 handshake_sources: tuple[str, ...], handshake_degraded: bool,
                 mode: str = MODE_RATCHET, otp: OtpPad | None = None) -> None:
        self.ratchet = ratchet
        self.own_handle = own_handle
        self.peer_handle = peer_handle
        self.peer_identity = peer_identity
        self.peer_sae_id = peer_sae_id
        self.handshake_sources = handshake_sources
        self.handshake_degraded = handshake_degraded
        self.mode = mode
        self.otp = otp or OtpPad()

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def initiate(cls, identity: Identity, handle: str, sae_id: str, bundle: PrekeyBundle,
                 qkd: QkdKeys | None, *, config: RatchetConfig | None = None,
                 use_conservative: bool = True,
                 randomness: HandshakeRandomness | None = None) -> Session:
        """Open a session to ``bundle``'s owner (``qkd``: enc_keys for ``bundle.sae_id``)."""
        config = config or RatchetConfig()
        initial, keys = initiate(identity, handle, sae_id, bundle, qkd, policy=config.policy,
                                 use_conservative=use_conservative, randomness=randomness)
        ratchet = Ratchet.from_handshake(keys, initiator=True, config=config,
                                         initial_message=initial.encode())
        return cls(ratchet, own_handle=handle, peer_handle=bundle.handle,
                   peer_identity=bundle.identity, peer_sae_id=bundle.sae_id,
                   handshake_sources=keys.sources, handshake_degraded=keys.degraded)

    @staticmethod
    def peek_initial(wire: bytes) -> InitialMessage:
        """The initial message inside a first (prekey) message: sender and QKD key_IDs."""
        header = parse_header(wire)
        if header.kind != T_PREKEY:
            raise MalformedMessage("not a session-opening (prekey) message")
        return InitialMessage.decode(header.initial)

    @classmethod
    def accept(cls, wire: bytes, identity: Identity, handle: str, sae_id: str,
               bundle: PrekeyBundle, secrets: PrekeySecrets, qkd: QkdKeys | None, *,
               config: RatchetConfig | None = None,
               expected_initiator: PublicIdentity | None = None,
               ) -> tuple[Session, list[SessionEvent]]:
        """Create the responder's session from a prekey message and decrypt that message.

        ``qkd``: keys fetched with dec_keys for the initial message's key_IDs. Removes the
        used one-time prekey from ``secrets``. Raises, changing nothing, on any bad input.
        """
        config = config or RatchetConfig()
        initial = cls.peek_initial(wire)
        spare = PrekeySecrets.from_dict(secrets.to_dict())
        keys = respond(identity, handle, sae_id, bundle, spare, initial, qkd,
                       policy=config.policy, expected_initiator=expected_initiator)
        ratchet = Ratchet.from_handshake(keys, initiator=False, config=config,
                                         initial_message=initial.encode())
        session = cls(ratchet, own_handle=handle, peer_handle=initial.initiator_handle,
                      peer_identity=initial.initiator_identity,
                      peer_sae_id=initial.initiator_sae_id, handshake_sources=keys.sources,
                      handshake_degraded=keys.degraded)
        events = session.decrypt(wire)
        secrets.one_time.clear()
        secrets.one_time.update(spare.one_time)
        return session, events

    @property
    def session_id(self) -> bytes:
        return self.ratchet.session_id

    # -- sending ----------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        if mode not in (MODE_RATCHET, MODE_OTP):
            raise ValueError(f"unknown mode {mode!r}: use {MODE_RATCHET!r} or {MODE_OTP!r}")
        self.mode = mode

    def send_plan(self) -> SendPlan:
        """What the next encrypt needs from the KME (OTP mode: see :meth:`otp_shortfall`)."""
        if self.mode == MODE_OTP:
            return SendPlan(False, "one-time pad", 0)
        return self.ratchet.send_plan()

    def otp_shortfall(self, plaintext_length: int) -> int:
        """Pad bytes still to fetch (enc_keys) before a message of this length can be sent."""
        return self.otp.shortfall(plaintext_length)

    def add_otp_keys(self, qkd: QkdKeys) -> None:
        """Add keys fetched with enc_keys to the sending pad."""
        self.otp.add_send_keys(qkd)

    def encrypt(self, plaintext: bytes, qkd: QkdKeys | None = None) -> Outgoing:
        """Seal ``plaintext``. Persist :meth:`to_bytes` before handing ``wire`` to the transport."""
        if self.mode == MODE_OTP:
            if qkd is not None:
                self.otp.add_send_keys(qkd)
            wire, exporter = self.otp.seal_exporting(plaintext, self.session_id)
            return Outgoing(wire, wire_id(wire), False, ("QKD",), False, True, exporter)
        before = self.ratchet.send_turn
        wire, exporter = self.ratchet.seal(plaintext, qkd)
        return Outgoing(wire, wire_id(wire), self.ratchet.send_turn != before,
                        self.ratchet.send_sources, self.ratchet.send_degraded, False, exporter)

    # -- receiving --------------------------------------------------------------------

    def qkd_needed(self, wire: bytes) -> tuple[str, ...]:
        """key_IDs to fetch with dec_keys (from this peer's SAE) before :meth:`decrypt`."""
        if len(wire) > 1 and wire[1] == T_OTP:
            return self.otp.missing_keys(wire)
        return self.ratchet.qkd_needed(wire)

    def decrypt(self, wire: bytes, qkd: QkdKeys | None = None) -> list[SessionEvent]:
        """Open ``wire``; raises (state unchanged) when it is bad; see module doc for events."""
        if len(wire) > 1 and wire[1] == T_OTP:
            missing = self.otp.missing_keys(wire)
            if missing:
                if qkd is None:
                    raise QkdMissing(f"one-time-pad message needs QKD key(s) {', '.join(missing)}:"
                                     " fetch them with dec_keys")
                self.otp.add_recv_keys(qkd.select(missing))
            seq = OtpPad.parse(wire)[0]
            plaintext, exporter = self.otp.open_exporting(wire, self.session_id)
            return [Message(plaintext, f"otp.{seq}", ("QKD",), False, True, exporter)]
        out: list[SessionEvent] = []
        for event in self.ratchet.decrypt(wire, qkd):
            if isinstance(event, Received):
                out.append(Message(event.plaintext, event.message_id, event.sources,
                                   event.degraded, exporter=event.exporter))
            else:
                out.append(event)
        return out

    # -- status and persistence -------------------------------------------------------

    def status(self) -> SessionStatus:
        r = self.ratchet
        return SessionStatus(
            self.mode,
            _label(self.handshake_sources, self.handshake_degraded, False),
            _label(r.send_sources, r.send_degraded, False) if r.send_sources else "-",
            _label(r.recv_sources, r.recv_degraded, False) if r.recv_sources else "-",
            r.send_degraded or r.recv_degraded,
            r.send_turn, r.recv_turn,
            self.otp.send.available(), self.otp.recv.available(), len(r.pending),
        )

    def to_bytes(self) -> bytes:
        """Secret state for the sealed store (never write it anywhere unsealed)."""
        return cbor2.dumps({
            "v": STATE_VERSION,
            "ratchet": self.ratchet.to_dict(),
            "own_handle": self.own_handle,
            "peer": [self.peer_handle, self.peer_identity.encode(), self.peer_sae_id],
            "handshake": [list(self.handshake_sources), self.handshake_degraded],
            "mode": self.mode,
            "otp": self.otp.to_dict(),
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> Session:
        try:
            state = cbor2.loads(data)
        except Exception as exc:  # cbor2 raises several types for bad input
            raise MalformedMessage(f"session state does not decode: {exc}") from None
        if not isinstance(state, dict) or state.get("v") != STATE_VERSION:
            raise UnsupportedVersion("session state version is not supported")
        peer_handle, peer_identity, peer_sae = state["peer"]
        sources, degraded = state["handshake"]
        return cls(Ratchet.from_dict(state["ratchet"]), own_handle=state["own_handle"],
                   peer_handle=peer_handle, peer_identity=PublicIdentity.decode(peer_identity),
                   peer_sae_id=peer_sae, handshake_sources=tuple(sources),
                   handshake_degraded=degraded, mode=state["mode"],
                   otp=OtpPad.from_dict(state["otp"]))


__all__ = [
    "MODE_OTP",
    "MODE_RATCHET",
    "Deferred",
    "Discarded",
    "Message",
    "Outgoing",
    "ProtocolError",
    "QkdPolicy",
    "Session",
    "SessionEvent",
    "SessionStatus",
    "wire_id",
]
