"""The session handshake: PQXDH-style X25519 + ML-KEM (+ optional second PQ KEM) + QKD.

Sans-I/O. The initiator (Alice) holds the responder's verified bundle and
computes

    DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)
    (ct, ss_pq)  = ML-KEM-768.Encaps(OPK_B or last-resort PQSPK_B)
    (ct2, ss_pq2) = conservative KEM (FrodoKEM / McEliece) when both sides have liboqs
    qkd          = key bytes Alice fetched with enc_keys for Bob's SAE_ID (or None)

and mixes them with keysource.mix over a transcript holding the initial
message body (both handles, both identities, both SAE_IDs, the bundle digest,
prekey ids, EK_A, every KEM ciphertext, the QKD key_IDs, Alice's first
ratchet KEM key), the responder's identity, the signed bundle part and the
one-time prekey. Alice signs SHA-512 of that transcript with her hybrid key,
so the initial message is authenticated against a quantum adversary too.
Bob fetches the same QKD keys with dec_keys (key_IDs from the message) and
passes them to :func:`respond`.

The 96 mixed bytes become the initiator->responder root key, the first
initiator chain key and the responder->initiator root key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from keysource import mix as combiner
from keysource import pq
from keysource.mix import MixedKey, MixInputs, QkdPolicy, Transcript
from keysource.pq import x25519_keypair, x25519_public, x25519_shared

from .bundle import PQ_KEM, PrekeyBundle, PrekeySecrets, check_peer_sae_id
from .codec import Reader, Writer
from .errors import (
    BadSignature,
    IdentityMismatch,
    MalformedMessage,
    PrekeyUnavailable,
    QkdMissing,
    UnsupportedVersion,
    WrongRecipient,
)
from .identity import Identity, PublicIdentity
from .qkd import QkdKeys, decode_key_ids, encode_key_ids

INITIAL_MAGIC = b"QSI\x01"
PQ_ONE_TIME = 1
PQ_LAST_RESORT = 2
MIX_PURPOSE = "handshake"


@dataclass(frozen=True)
class InitialMessage:
    """Alice's first message: everything Bob needs to derive the same keys, signed by Alice."""

    initiator_handle: str
    initiator_identity: PublicIdentity
    initiator_sae_id: str
    responder_handle: str
    responder_fingerprint: bytes
    responder_sae_id: str
    bundle_digest: bytes
    x25519_prekey_id: int
    pq_kind: int
    pq_prekey_id: int
    ephemeral: bytes
    kem_ciphertext: bytes
    pq2: tuple[int, str, bytes] | None
    qkd_key_ids: tuple[str, ...]
    ratchet_kem_public: bytes
    signature: bytes = b""

    def body(self) -> bytes:
        writer = (
            Writer()
            .raw(INITIAL_MAGIC)
            .s8(self.initiator_handle)
            .b16(self.initiator_identity.encode())
            .s8(self.initiator_sae_id)
            .s8(self.responder_handle)
            .raw(self.responder_fingerprint)
            .s8(self.responder_sae_id)
            .raw(self.bundle_digest)
            .u32(self.x25519_prekey_id)
            .u8(self.pq_kind)
            .u32(self.pq_prekey_id)
            .raw(self.ephemeral)
            .b16(self.kem_ciphertext)
        )
        if self.pq2 is None:
            writer.u8(0)
        else:
            writer.u8(1).u32(self.pq2[0]).s8(self.pq2[1]).b32(self.pq2[2])
        writer.raw(encode_key_ids(self.qkd_key_ids)).b16(self.ratchet_kem_public)
        return writer.getvalue()

    def encode(self) -> bytes:
        return Writer().raw(self.body()).b16(self.signature).getvalue()

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()

    @classmethod
    def decode(cls, data: bytes) -> InitialMessage:
        reader = Reader(data, "initial message")
        if reader.raw(len(INITIAL_MAGIC)) != INITIAL_MAGIC:
            raise UnsupportedVersion("initial message has an unknown magic or version")
        initiator_handle = reader.s8()
        initiator_identity = PublicIdentity.decode(reader.b16())
        initiator_sae = reader.s8()
        responder_handle = reader.s8()
        responder_fp = reader.raw(32)
        responder_sae = reader.s8()
        bundle_digest = reader.raw(32)
        x_id, pq_kind, pq_id = reader.u32(), reader.u8(), reader.u32()
        ephemeral = reader.raw(32)
        kem_ct = reader.b16()
        pq2 = None
        flag = reader.u8()
        if flag == 1:
            pq2 = (reader.u32(), reader.s8(), reader.b32())
        elif flag != 0:
            raise MalformedMessage("initial message has a bad second-KEM flag")
        key_ids, offset = decode_key_ids(data, reader.position)
        reader.raw(offset - reader.position)
        ratchet_kem = reader.b16()
        signature = reader.b16()
        reader.done()
        check_peer_sae_id(initiator_sae, "initial message")
        check_peer_sae_id(responder_sae, "initial message")
        if pq_kind not in (PQ_ONE_TIME, PQ_LAST_RESORT):
            raise MalformedMessage(f"initial message has unknown PQ prekey kind {pq_kind}")
        if len(ratchet_kem) != pq.get_kem(PQ_KEM).sizes.public_key:
            raise MalformedMessage("initial message ratchet key is not an ML-KEM-768 public key")
        return cls(initiator_handle, initiator_identity, initiator_sae, responder_handle,
                   responder_fp, responder_sae, bundle_digest, x_id, pq_kind, pq_id, ephemeral,
                   kem_ct, pq2, key_ids, ratchet_kem, signature)


@dataclass(frozen=True)
class HandshakeKeys:
    """What a completed handshake hands to the ratchet (secrets: never log)."""

    root_initiator: bytes  # root key of the initiator->responder direction
    chain_initiator: bytes  # first initiator chain key (message 0..)
    root_responder: bytes  # root key of the responder->initiator direction
    session_id: bytes  # SHA-256 of the transcript: names the conversation
    sources: tuple[str, ...]
    degraded: bool
    own_dh_secret: bytes  # our ratchet X25519 key, version 0
    own_kem_secret: bytes  # our ratchet ML-KEM key, version 0
    peer_dh_public: bytes  # peer ratchet X25519 key, version 0
    peer_kem_public: bytes  # peer ratchet ML-KEM key, version 0
    transcript: bytes

    @property
    def label(self) -> str:
        text = "+".join(self.sources)
        return f"{text} (degraded: no QKD)" if self.degraded else text

    def __repr__(self) -> str:
        return f"HandshakeKeys(sources={self.sources!r}, degraded={self.degraded})"


@dataclass(frozen=True)
class HandshakeRandomness:
    """The handshake's random choices, injectable so test vectors are reproducible."""

    ephemeral_secret: bytes
    ratchet_kem_seed: bytes
    encapsulate: Callable[[str, bytes], tuple[bytes, bytes]]

    @classmethod
    def fresh(cls) -> HandshakeRandomness:
        import os

        return cls(x25519_keypair().secret_key, os.urandom(64),
                   lambda alg, pk: pq.get_kem(alg).encapsulate(pk))


def transcript_for(initial: InitialMessage, responder: PublicIdentity, bundle_signed: bytes,
                   one_time_public: bytes) -> Transcript:
    """The transcript both sides mix: every public value that went into the keys."""
    return (
        Transcript("qsecret/v1/handshake")
        .add("initial", initial.body())
        .add("responder.identity", responder.encode())
        .add("bundle.signed", bundle_signed)
        .add("one-time-prekey", one_time_public)
    )


def _derive(mixed: MixedKey, transcript: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    key = mixed.key
    return key[:32], key[32:64], key[64:96], hashlib.sha256(transcript).digest()


def initiate(
    identity: Identity,
    handle: str,
    sae_id: str,
    bundle: PrekeyBundle,
    qkd: QkdKeys | None,
    *,
    policy: QkdPolicy = QkdPolicy.PREFER,
    use_conservative: bool = True,
    randomness: HandshakeRandomness | None = None,
) -> tuple[InitialMessage, HandshakeKeys]:
    """Alice's side: the initial message to send and the session keys.

    ``bundle`` must come from :func:`client.protocol.bundle.parse_bundle` (signatures
    checked there); ``qkd`` are keys fetched with enc_keys for ``bundle.sae_id``.
    """
    rnd = randomness or HandshakeRandomness.fresh()
    part = bundle.part
    if bundle.one_time:
        otk = bundle.one_time[0]
        pq_kind, pq_id, pq_public = PQ_ONE_TIME, otk.key_id, otk.public
    else:
        pq_kind, pq_id, pq_public = PQ_LAST_RESORT, part.pq_prekey.key_id, part.pq_prekey.public
    ek_secret = rnd.ephemeral_secret
    ek_public = x25519_public(ek_secret)
    spk = part.x25519_prekey.public
    ecdh = (
        x25519_shared(identity.dh_secret, spk)
        + x25519_shared(ek_secret, part.dh_identity)
        + x25519_shared(ek_secret, spk)
    )
    kem_ct, ss_pq = rnd.encapsulate(PQ_KEM, pq_public)
    pq2 = None
    ss_pq2 = None
    pq2_alg = None
    conservative = part.conservative_prekey
    if use_conservative and conservative is not None and _can_use(conservative.alg):
        ct2, ss_pq2 = rnd.encapsulate(conservative.alg, conservative.public)
        pq2, pq2_alg = (conservative.key_id, conservative.alg, ct2), conservative.alg
    ratchet_kem = pq.get_kem(PQ_KEM, "openssl").keypair_from_seed(rnd.ratchet_kem_seed)  # type: ignore[attr-defined]
    initial = InitialMessage(
        handle, identity.public, sae_id, bundle.handle, bundle.identity.fingerprint,
        part.sae_id, bundle.digest, part.x25519_prekey.key_id, pq_kind, pq_id, ek_public,
        kem_ct, pq2, qkd.key_ids if qkd else (), ratchet_kem.public_key,
    )
    transcript = transcript_for(initial, bundle.identity, bundle.signed,
                                pq_public if pq_kind == PQ_ONE_TIME else b"").to_bytes()
    mixed = combiner.mix(
        MixInputs(qkd=qkd.material if qkd else None, pq=ss_pq, pq2=ss_pq2, ecdh=ecdh,
                  pq_alg=PQ_KEM, pq2_alg=pq2_alg),
        transcript=transcript, purpose=MIX_PURPOSE, length=96, policy=policy,
    )
    signature = identity.sign(hashlib.sha512(transcript).digest())
    initial = InitialMessage(**{**initial.__dict__, "signature": signature})
    root_i, chain_i, root_r, session_id = _derive(mixed, transcript)
    keys = HandshakeKeys(root_i, chain_i, root_r, session_id, mixed.sources, mixed.degraded,
                         ek_secret, ratchet_kem.secret_key, spk, part.pq_prekey.public,
                         transcript)
    return initial, keys


def _can_use(alg: str) -> bool:
    try:
        pq.get_kem(alg)
    except pq.PqError:
        return False
    return True


def respond(
    identity: Identity,
    handle: str,
    sae_id: str,
    bundle: PrekeyBundle,
    secrets: PrekeySecrets,
    initial: InitialMessage,
    qkd: QkdKeys | None,
    *,
    policy: QkdPolicy = QkdPolicy.PREFER,
    expected_initiator: PublicIdentity | None = None,
) -> HandshakeKeys:
    """Bob's side: check the initial message is for us and signed, then derive the same keys.

    A used one-time prekey is removed from ``secrets`` (persist them afterwards).
    Raises before changing anything when a check fails.
    """
    if initial.responder_handle != handle:
        raise WrongRecipient(
            f"initial message is addressed to {initial.responder_handle!r}, not {handle!r}"
        )
    if initial.responder_fingerprint != identity.public.fingerprint:
        raise WrongRecipient("initial message is addressed to another identity key")
    if initial.responder_sae_id != sae_id:
        raise WrongRecipient(
            f"initial message is bound to SAE {initial.responder_sae_id!r}, not ours ({sae_id!r})"
        )
    if initial.bundle_digest != bundle.digest:
        raise WrongRecipient("initial message was made from a bundle we did not publish "
                             "(or no longer serve)")
    if expected_initiator is not None and initial.initiator_identity != expected_initiator:
        raise IdentityMismatch(
            f"{initial.initiator_handle!r} presents identity "
            f"{initial.initiator_identity.fingerprint_hex()}, not the pinned "
            f"{expected_initiator.fingerprint_hex()}: refusing"
        )
    if initial.qkd_key_ids:
        if qkd is None:
            raise QkdMissing(
                "the initial message names QKD key(s) "
                f"{', '.join(initial.qkd_key_ids)}: fetch them with dec_keys from SAE "
                f"{initial.initiator_sae_id!r} and pass them in"
            )
        qkd = qkd.select(initial.qkd_key_ids)
    else:
        qkd = None
    part = bundle.part
    x_secret = secrets.x25519.get(initial.x25519_prekey_id)
    if x_secret is None:
        raise PrekeyUnavailable(f"X25519 prekey {initial.x25519_prekey_id} is not ours (rotated?)")
    if initial.pq_kind == PQ_ONE_TIME:
        pq_secret = secrets.one_time.get(initial.pq_prekey_id)
        if pq_secret is None:
            raise PrekeyUnavailable(
                f"one-time prekey {initial.pq_prekey_id} was already used or never existed: "
                "a replayed or stale initial message"
            )
        otk_public = pq.get_kem(PQ_KEM, "openssl").keypair_from_seed(pq_secret).public_key  # type: ignore[attr-defined]
    else:
        pq_secret = secrets.pq.get(initial.pq_prekey_id)
        if pq_secret is None:
            raise PrekeyUnavailable(f"last-resort prekey {initial.pq_prekey_id} is not ours")
        otk_public = b""
    transcript = transcript_for(initial, identity.public, bundle.signed, otk_public).to_bytes()
    try:
        initial.initiator_identity.verify(hashlib.sha512(transcript).digest(), initial.signature)
    except BadSignature as exc:
        raise BadSignature(
            f"initial message from {initial.initiator_handle!r}: {exc}"
        ) from None
    ecdh = (
        x25519_shared(x_secret, initial.initiator_identity.dh_key)
        + x25519_shared(identity.dh_secret, initial.ephemeral)
        + x25519_shared(x_secret, initial.ephemeral)
    )
    try:
        ss_pq = pq.get_kem(PQ_KEM).decapsulate(pq_secret, initial.kem_ciphertext)
    except pq.PqError as exc:
        raise MalformedMessage(f"initial message KEM ciphertext rejected: {exc}") from None
    ss_pq2 = None
    pq2_alg = None
    if initial.pq2 is not None:
        pq2_id, pq2_alg, ct2 = initial.pq2
        held = secrets.conservative.get(pq2_id)
        if held is None or held[0] != pq2_alg:
            raise PrekeyUnavailable(f"conservative prekey {pq2_id} ({pq2_alg}) is not ours")
        try:
            ss_pq2 = pq.get_kem(pq2_alg).decapsulate(held[1], ct2)
        except pq.PqError as exc:
            raise MalformedMessage(f"second KEM ciphertext rejected: {exc}") from None
    mixed = combiner.mix(
        MixInputs(qkd=qkd.material if qkd else None, pq=ss_pq, pq2=ss_pq2, ecdh=ecdh,
                  pq_alg=PQ_KEM, pq2_alg=pq2_alg),
        transcript=transcript, purpose=MIX_PURPOSE, length=96, policy=policy,
    )
    if initial.pq_kind == PQ_ONE_TIME:
        del secrets.one_time[initial.pq_prekey_id]
    root_i, chain_i, root_r, session_id = _derive(mixed, transcript)
    return HandshakeKeys(root_i, chain_i, root_r, session_id, mixed.sources, mixed.degraded,
                         x_secret, secrets.pq[part.pq_prekey.key_id], initial.ephemeral,
                         initial.ratchet_kem_public, transcript)
