"""The handshake test vector: any change of the wire format or KDF must be deliberate."""

from __future__ import annotations

import json
from pathlib import Path

from client.protocol import Session
from client.protocol.qkd import QkdKeys
from keysource import pq

from .vectors_lib import build, parties, signatures_needed

VECTOR = json.loads((Path(__file__).parent / "vectors" / "handshake_v1.json").read_text())
INPUTS, OUTPUTS = VECTOR["inputs"], VECTOR["outputs"]


def test_every_output_matches_byte_for_byte() -> None:
    computed = build(INPUTS)
    assert computed.keys() == OUTPUTS.keys()
    for name, value in OUTPUTS.items():
        assert computed[name] == value, f"{name} differs from the published vector"
    assert OUTPUTS["sources"] == "QKD+ML-KEM-768+X25519"


def test_recorded_random_values_are_genuine() -> None:
    p = parties(INPUTS)
    ss = pq.get_kem("ML-KEM-768").decapsulate(p["secrets"].one_time[7],
                                               bytes.fromhex(INPUTS["kem_ciphertext"]))
    assert ss.hex() == INPUTS["kem_shared_secret"]
    messages = signatures_needed(INPUTS)
    bob = p["bob"].public
    bob.verify(messages["bundle"], bytes.fromhex(INPUTS["bundle_signature"]))
    bob.verify(messages["otk"], bytes.fromhex(INPUTS["otk_signature"]))


def test_the_responder_accepts_the_vector_first_message() -> None:
    p = parties(INPUTS)
    wire = bytes.fromhex(OUTPUTS["first_message"])
    qkd = QkdKeys((INPUTS["qkd_key_id"],), (bytes.fromhex(INPUTS["qkd_key"]),))
    session, events = Session.accept(wire, p["bob"], INPUTS["bob_handle"], INPUTS["bob_sae_id"],
                                     p["bundle"], p["secrets"], qkd)
    assert events[0].plaintext == INPUTS["first_plaintext"].encode()
    assert session.session_id.hex() == OUTPUTS["session_id"]


def test_keys_follow_the_published_formula_independently_of_the_code() -> None:
    """K = HKDF-SHA-512(salt=SHA-512(T), ikm=presence||lp(qkd)||lp(pq)||lp(pq2)||lp(ecdh),
    info="qsecret/v1/handshake", 96) computed here with raw HKDF."""
    import hashlib
    import struct

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    def lp(x: bytes) -> bytes:
        return struct.pack(">H", len(x)) + x

    qkd = bytes.fromhex(INPUTS["qkd_key"])
    ss = bytes.fromhex(INPUTS["kem_shared_secret"])
    ecdh = b"".join(bytes.fromhex(OUTPUTS[k]) for k in ("dh1", "dh2", "dh3"))
    ikm = bytes([0b1011]) + lp(qkd) + lp(ss) + lp(b"") + lp(ecdh)
    transcript = bytes.fromhex(OUTPUTS["transcript"])
    key = HKDF(hashes.SHA512(), 96, hashlib.sha512(transcript).digest(),
               b"qsecret/v1/handshake").derive(ikm)
    assert key.hex() == (OUTPUTS["root_initiator"] + OUTPUTS["chain_initiator"]
                         + OUTPUTS["root_responder"])
    assert hashlib.sha256(transcript).hexdigest() == OUTPUTS["session_id"]
    assert bytes.fromhex(OUTPUTS["initial_body"]) in transcript
