"""Build the handshake test vector from fixed inputs (shared by the test and the generator).

Everything derives from seeds. Two things are random in the real protocol and are
therefore *inputs* of the vector, recorded once: the ML-KEM encapsulation (ciphertext and
shared secret; the test checks the recorded ciphertext decapsulates to the recorded secret
under the seed-derived key) and the ML-DSA halves of the hybrid signatures (hedged
signing; the test checks they verify). Given those, every output is deterministic: the
encodings, the transcript, the DH outputs, the mixed keys and the first message's bytes.
"""

from __future__ import annotations

import hashlib
from typing import Any

from client.protocol.bundle import (
    OneTimePrekey,
    Prekey,
    PrekeyBundle,
    PrekeySecrets,
    SignedPart,
    one_time_message,
    signed_part_message,
)
from client.protocol.handshake import HandshakeRandomness, initiate
from client.protocol.identity import Identity
from client.protocol.qkd import QkdKeys
from client.protocol.ratchet import Ratchet
from keysource import pq
from keysource.pq import x25519_public, x25519_shared

KEM = "ML-KEM-768"


def _kem_pair(seed: bytes):
    return pq.get_kem(KEM, "openssl").keypair_from_seed(seed)  # type: ignore[attr-defined]


def parties(inp: dict[str, str]) -> dict[str, Any]:
    """Identities, bundle and secrets from the vector's inputs (signatures as recorded)."""
    h = bytes.fromhex
    alice, bob = Identity.from_seed(h(inp["alice_seed"])), Identity.from_seed(h(inp["bob_seed"]))
    spk_secret = h(inp["bob_spk_secret"])
    pqspk, otk = _kem_pair(h(inp["bob_pqspk_seed"])), _kem_pair(h(inp["bob_otk_seed"]))
    part = SignedPart(bob.dh_public, inp["bob_sae_id"], inp["bob_kme_hint"],
                      Prekey(1, "X25519", x25519_public(spk_secret)),
                      Prekey(1, KEM, pqspk.public_key))
    signed = part.encode()
    bundle = PrekeyBundle(inp["bob_handle"], bob.public, signed, h(inp["bundle_signature"]),
                          (OneTimePrekey(7, otk.public_key, h(inp["otk_signature"])),), part)
    secrets = PrekeySecrets({1: spk_secret}, {1: pqspk.secret_key}, {7: otk.secret_key}, {})
    return {"alice": alice, "bob": bob, "bundle": bundle, "secrets": secrets, "otk": otk}


def build(inp: dict[str, str]) -> dict[str, Any]:
    """Every output of the vector, computed from its inputs."""
    h = bytes.fromhex
    p = parties(inp)
    alice, bob, bundle = p["alice"], p["bob"], p["bundle"]
    qkd = QkdKeys((inp["qkd_key_id"],), (h(inp["qkd_key"]),))
    ct, ss = h(inp["kem_ciphertext"]), h(inp["kem_shared_secret"])
    randomness = HandshakeRandomness(h(inp["alice_ephemeral_secret"]),
                                     h(inp["alice_ratchet_kem_seed"]), lambda alg, pk: (ct, ss))
    initial, keys = initiate(alice, inp["alice_handle"], inp["alice_sae_id"], bundle, qkd,
                             randomness=randomness)
    initial_signed = type(initial)(**{**initial.__dict__,
                                      "signature": h(inp["initial_signature"])})
    ratchet = Ratchet.from_handshake(keys, initiator=True, initial_message=initial_signed.encode())
    first = ratchet.encrypt(inp["first_plaintext"].encode())
    spk_secret, ek = h(inp["bob_spk_secret"]), h(inp["alice_ephemeral_secret"])
    return {
        "alice_identity": alice.public.encode().hex(),
        "bob_identity": bob.public.encode().hex(),
        "bundle_signed_part": bundle.signed.hex(),
        "bundle_signed_message_sha256": hashlib.sha256(signed_part_message(
            bundle.handle, bob.signing_public, bundle.signed)).hexdigest(),
        "otk_public_sha256": hashlib.sha256(p["otk"].public_key).hexdigest(),
        "initial_body": initial.body().hex(),
        "transcript": keys.transcript.hex(),
        "transcript_sha512": hashlib.sha512(keys.transcript).hexdigest(),
        "dh1": x25519_shared(alice.dh_secret, x25519_public(spk_secret)).hex(),
        "dh2": x25519_shared(ek, bob.dh_public).hex(),
        "dh3": x25519_shared(ek, x25519_public(spk_secret)).hex(),
        "root_initiator": keys.root_initiator.hex(),
        "chain_initiator": keys.chain_initiator.hex(),
        "root_responder": keys.root_responder.hex(),
        "session_id": keys.session_id.hex(),
        "sources": "+".join(keys.sources),
        "first_message": first.hex(),
    }


def signatures_needed(inp: dict[str, str]) -> dict[str, bytes]:
    """The messages the recorded signatures must sign (used by the generator)."""
    p = parties({**inp, "bundle_signature": "", "otk_signature": "", "initial_signature": ""})
    bundle, bob = p["bundle"], p["bob"]
    return {
        "bundle": signed_part_message(bundle.handle, bob.signing_public, bundle.signed),
        "otk": one_time_message(bundle.handle, bob.signing_public, 7, p["otk"].public_key),
    }
