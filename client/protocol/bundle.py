"""Prekey bundles: what a user publishes so others can open a session while they are offline.

A bundle has three parts, matching the relay's upload format (relay.wire):

* ``identity`` - the owner's hybrid (Ed25519 + ML-DSA-65) public signing key;
* ``signed``   - the signed part (encoded here): X25519 identity key, SAE_ID and
  KME hint, a signed X25519 prekey, a signed last-resort ML-KEM-768 prekey and,
  optionally, a conservative liboqs KEM prekey (FrodoKEM / Classic McEliece);
* ``one_time`` - ML-KEM-768 one-time prekeys, each ``(id, key, signature)``.

Signatures cover exactly the encodings of :mod:`relay.wire.prekeys` (repeated
here so the protocol core parses without the relay; a test keeps them equal):

    signed part:      "qsecret/v1/prekey-signed\\x00"   || lp(handle) || lp(identity) || lp(signed)
    one-time prekey:  "qsecret/v1/prekey-one-time\\x00" || lp(handle) || lp(identity)
                                                        || u32(key_id) || lp(key)

Every signature is checked when a bundle is parsed.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from keysource import pq
from keysource.kme.sae_id import InvalidSaeId, check_sae_id
from keysource.pq import x25519_keypair

from .codec import Reader, Writer
from .errors import BadSignature, IdentityMismatch, MalformedMessage, UnsupportedVersion
from .identity import Identity, PublicIdentity, _hybrid

SIGNED_MAGIC = b"QSB\x01"
BUNDLE_MAGIC = b"QSPB\x01"
SIGNED_DOMAIN = b"qsecret/v1/prekey-signed\x00"
ONE_TIME_DOMAIN = b"qsecret/v1/prekey-one-time\x00"
PQ_KEM = "ML-KEM-768"
CONSERVATIVE_KEMS = ("FrodoKEM-976-AES", "Classic-McEliece-348864", "Classic-McEliece-460896")


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def signed_part_message(handle: str, identity: bytes, signed: bytes) -> bytes:
    """The bytes the signed-part signature covers (same as relay.wire.prekeys)."""
    return SIGNED_DOMAIN + _lp(handle.encode()) + _lp(identity) + _lp(signed)


def one_time_message(handle: str, identity: bytes, key_id: int, key: bytes) -> bytes:
    """The bytes a one-time prekey signature covers (same as relay.wire.prekeys)."""
    return (
        ONE_TIME_DOMAIN
        + _lp(handle.encode())
        + _lp(identity)
        + struct.pack(">I", key_id)
        + _lp(key)
    )


def check_peer_sae_id(value: str, where: str) -> str:
    """A peer's SAE_ID, checked by the KME's own rule before it can reach a KME URL
    (:mod:`keysource.kme.sae_id`); ``where`` names the message it came in."""
    try:
        return check_sae_id(value, "SAE_ID")
    except InvalidSaeId as exc:
        raise MalformedMessage(f"{where} refused: {exc}") from None


@dataclass(frozen=True)
class Prekey:
    key_id: int
    alg: str
    public: bytes


@dataclass(frozen=True)
class OneTimePrekey:
    key_id: int
    public: bytes
    signature: bytes


@dataclass(frozen=True)
class SignedPart:
    """The signed part of a bundle (its encoding is opaque to the relay)."""

    dh_identity: bytes
    sae_id: str
    kme_hint: str
    x25519_prekey: Prekey
    pq_prekey: Prekey
    conservative_prekey: Prekey | None = None

    def encode(self) -> bytes:
        writer = (
            Writer()
            .raw(SIGNED_MAGIC)
            .b8(self.dh_identity)
            .s8(self.sae_id)
            .s8(self.kme_hint)
            .u32(self.x25519_prekey.key_id)
            .b8(self.x25519_prekey.public)
            .u32(self.pq_prekey.key_id)
            .s8(self.pq_prekey.alg)
            .b16(self.pq_prekey.public)
        )
        if self.conservative_prekey is None:
            writer.u8(0)
        else:
            c = self.conservative_prekey
            writer.u8(1).u32(c.key_id).s8(c.alg).b32(c.public)
        return writer.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> SignedPart:
        reader = Reader(data, "bundle signed part")
        if reader.raw(len(SIGNED_MAGIC)) != SIGNED_MAGIC:
            raise UnsupportedVersion("bundle signed part has an unknown magic or version")
        dh_identity, sae_id, kme_hint = reader.b8(), reader.s8(), reader.s8()
        x_id, x_pub = reader.u32(), reader.b8()
        pq_id, pq_alg, pq_pub = reader.u32(), reader.s8(), reader.b16()
        conservative = None
        flag = reader.u8()
        if flag == 1:
            conservative = Prekey(reader.u32(), reader.s8(), reader.b32())
        elif flag != 0:
            raise MalformedMessage("bundle signed part has a bad conservative-prekey flag")
        reader.done()
        if len(dh_identity) != 32 or len(x_pub) != 32:
            raise MalformedMessage("bundle X25519 keys must be 32 bytes")
        if pq_alg != PQ_KEM or len(pq_pub) != pq.get_kem(PQ_KEM).sizes.public_key:
            raise MalformedMessage(f"bundle PQ prekey must be a {PQ_KEM} public key")
        check_peer_sae_id(sae_id, "bundle")
        return cls(dh_identity, sae_id, kme_hint, Prekey(x_id, "X25519", x_pub),
                   Prekey(pq_id, pq_alg, pq_pub), conservative)


@dataclass(frozen=True)
class PrekeyBundle:
    """A verified bundle (only :func:`parse_bundle` and :func:`generate_prekeys` make them)."""

    handle: str
    identity: PublicIdentity
    signed: bytes
    signed_signature: bytes
    one_time: tuple[OneTimePrekey, ...]
    part: SignedPart = field(compare=False)

    @property
    def sae_id(self) -> str:
        return self.part.sae_id

    @property
    def kme_hint(self) -> str:
        return self.part.kme_hint

    @property
    def digest(self) -> bytes:
        """SHA-256 of the signed part: binds a session to exactly this bundle."""
        return hashlib.sha256(self.signed).digest()

    def encode(self) -> bytes:
        """Self-contained canonical encoding (version, handle, all parts, signatures)."""
        writer = (
            Writer()
            .raw(BUNDLE_MAGIC)
            .s8(self.handle)
            .b16(self.identity.signing_key)
            .b32(self.signed)
            .b16(self.signed_signature)
            .u16(len(self.one_time))
        )
        for otk in self.one_time:
            writer.u32(otk.key_id).b16(otk.public).b16(otk.signature)
        return writer.getvalue()

    def with_one_time(self, count: int) -> PrekeyBundle:
        """The same bundle offering only its first ``count`` one-time prekeys (as fetched)."""
        return PrekeyBundle(self.handle, self.identity, self.signed, self.signed_signature,
                            self.one_time[:count], self.part)

    def to_relay(self):  # type: ignore[no-untyped-def]
        """This bundle as a relay.wire PrekeyBundle frame body."""
        from relay.wire import OneTimePrekey as WireOneTime
        from relay.wire import PrekeyBundle as WireBundle

        return WireBundle(
            self.identity.signing_key,
            self.signed,
            self.signed_signature,
            tuple(WireOneTime(o.key_id, o.public, o.signature) for o in self.one_time),
        )


def parse_bundle_parts(
    handle: str,
    identity_key: bytes,
    signed: bytes,
    signed_signature: bytes,
    one_time: list[tuple[int, bytes, bytes]],
    *,
    expected_identity: PublicIdentity | None = None,
) -> PrekeyBundle:
    """Verify every signature and decode; the entry point for bundles fetched from the relay."""
    hybrid = _hybrid()
    if len(identity_key) != hybrid.public_key_size:
        raise MalformedMessage("bundle identity key has the wrong size")
    part = SignedPart.decode(signed)
    identity = PublicIdentity(identity_key, part.dh_identity)
    if expected_identity is not None and identity != expected_identity:
        raise IdentityMismatch(
            f"the bundle for {handle!r} carries identity {identity.fingerprint_hex()}, "
            f"not the pinned {expected_identity.fingerprint_hex()}: refusing (verify the "
            "safety number before trusting a changed identity)"
        )
    try:
        identity.verify(signed_part_message(handle, identity_key, signed), signed_signature)
    except BadSignature as exc:
        raise BadSignature(f"bundle of {handle!r}: signed part: {exc}") from None
    kem_size = pq.get_kem(PQ_KEM).sizes.public_key
    checked = []
    for key_id, key, signature in one_time:
        if len(key) != kem_size:
            raise MalformedMessage(f"one-time prekey {key_id} is not a {PQ_KEM} public key")
        try:
            identity.verify(one_time_message(handle, identity_key, key_id, key), signature)
        except BadSignature as exc:
            raise BadSignature(f"bundle of {handle!r}: one-time prekey {key_id}: {exc}") from None
        checked.append(OneTimePrekey(key_id, key, signature))
    return PrekeyBundle(handle, identity, signed, signed_signature, tuple(checked), part)


def parse_bundle(data: bytes, *, expected_handle: str | None = None,
                 expected_identity: PublicIdentity | None = None) -> PrekeyBundle:
    """Decode :meth:`PrekeyBundle.encode` output, checking every signature."""
    reader = Reader(data, "prekey bundle")
    if reader.raw(len(BUNDLE_MAGIC)) != BUNDLE_MAGIC:
        raise UnsupportedVersion("prekey bundle has an unknown magic or version")
    handle = reader.s8()
    identity_key, signed, signature = reader.b16(), reader.b32(), reader.b16()
    one_time = [(reader.u32(), reader.b16(), reader.b16()) for _ in range(reader.u16())]
    reader.done()
    if expected_handle is not None and handle != expected_handle:
        raise IdentityMismatch(f"asked for the bundle of {expected_handle!r}, got {handle!r}")
    return parse_bundle_parts(handle, identity_key, signed, signature, one_time,
                              expected_identity=expected_identity)


@dataclass
class PrekeySecrets:
    """The private halves of a published bundle; one-time keys are deleted once used."""

    x25519: dict[int, bytes]
    pq: dict[int, bytes]
    one_time: dict[int, bytes]
    conservative: dict[int, tuple[str, bytes]]
    # Lowest one-time prekey id never issued (0: above every key held); ids never come back,
    # even once used and pruned keys are gone from the store.
    next_one_time: int = 0

    def to_dict(self) -> dict:
        return {"x25519": self.x25519, "pq": self.pq, "one_time": self.one_time,
                "conservative": {k: [a, s] for k, (a, s) in self.conservative.items()},
                "next_one_time": self.next_one_time}

    @classmethod
    def from_dict(cls, data: dict) -> PrekeySecrets:
        return cls(dict(data["x25519"]), dict(data["pq"]), dict(data["one_time"]),
                   {k: (v[0], v[1]) for k, v in data["conservative"].items()},
                   int(data.get("next_one_time", 0)))

    def __repr__(self) -> str:
        return f"PrekeySecrets(one_time={len(self.one_time)} left)"


def conservative_kem_available() -> str | None:
    """The conservative liboqs KEM this machine can offer, or None without liboqs."""
    status = pq.backend_status("liboqs")
    if not status.available:
        return None
    for name in CONSERVATIVE_KEMS:
        if name in status.kems:
            return name
    return None


def generate_prekeys(
    identity: Identity,
    handle: str,
    *,
    sae_id: str,
    kme_hint: str = "",
    one_time_count: int = 20,
    first_one_time_id: int = 1,
    conservative: str | None = None,
    key_id: int = 1,
) -> tuple[PrekeyBundle, PrekeySecrets]:
    """Make a signed bundle and its secrets (``conservative`` names a liboqs KEM, or None)."""
    kem = pq.get_kem(PQ_KEM)
    spk = x25519_keypair()
    pqspk = kem.generate_keypair()
    secrets = PrekeySecrets({key_id: spk.secret_key}, {key_id: pqspk.secret_key}, {}, {})
    conservative_prekey = None
    if conservative is not None:
        ckp = pq.get_kem(conservative).generate_keypair()
        conservative_prekey = Prekey(key_id, conservative, ckp.public_key)
        secrets.conservative[key_id] = (conservative, ckp.secret_key)
    part = SignedPart(identity.dh_public, sae_id, kme_hint,
                      Prekey(key_id, "X25519", spk.public_key),
                      Prekey(key_id, PQ_KEM, pqspk.public_key), conservative_prekey)
    signed = part.encode()
    signature = identity.sign(signed_part_message(handle, identity.signing_public, signed))
    one_time = []
    for otk_id in range(first_one_time_id, first_one_time_id + one_time_count):
        kp = kem.generate_keypair()
        secrets.one_time[otk_id] = kp.secret_key
        sig = identity.sign(one_time_message(handle, identity.signing_public, otk_id,
                                             kp.public_key))
        one_time.append(OneTimePrekey(otk_id, kp.public_key, sig))
    bundle = PrekeyBundle(handle, identity.public, signed, signature, tuple(one_time), part)
    return bundle, secrets
