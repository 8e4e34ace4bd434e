"""Regenerate tests/protocol/vectors/handshake_v1.json (only for a deliberate format change).

    .venv/bin/python -m tests.protocol.make_vectors
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from client.protocol.handshake import HandshakeRandomness, initiate
from keysource import pq

from .vectors_lib import build, parties, signatures_needed

OUT = Path(__file__).parent / "vectors" / "handshake_v1.json"


def _seed(label: str, size: int = 32) -> str:
    return hashlib.sha512(b"qsecret test vector v1/" + label.encode()).digest()[:size].hex()


def main() -> None:
    inp = {
        "alice_seed": _seed("alice"), "bob_seed": _seed("bob"),
        "alice_handle": "alice", "alice_sae_id": "SAE_ALICE",
        "bob_handle": "bob", "bob_sae_id": "SAE_BOB", "bob_kme_hint": "kme-b.example:8443",
        "bob_spk_secret": _seed("bob spk"), "bob_pqspk_seed": _seed("bob pqspk", 64),
        "bob_otk_seed": _seed("bob otk 7", 64),
        "alice_ephemeral_secret": _seed("alice ephemeral"),
        "alice_ratchet_kem_seed": _seed("alice ratchet kem", 64),
        "qkd_key_id": "6f1c7d0e-1a2b-4c3d-8e9f-0a1b2c3d4e5f", "qkd_key": _seed("qkd key"),
        "first_plaintext": "Hello Bob: QKD + ML-KEM-768 + X25519",
    }
    p = parties({**inp, "bundle_signature": "", "otk_signature": "", "initial_signature": ""})
    ct, ss = pq.get_kem("ML-KEM-768").encapsulate(p["otk"].public_key)
    inp["kem_ciphertext"], inp["kem_shared_secret"] = ct.hex(), ss.hex()
    messages = signatures_needed(inp)
    bob = p["bob"]
    inp["bundle_signature"] = bob.sign(messages["bundle"]).hex()
    inp["otk_signature"] = bob.sign(messages["otk"]).hex()
    p = parties({**inp, "initial_signature": ""})
    randomness = HandshakeRandomness(bytes.fromhex(inp["alice_ephemeral_secret"]),
                                     bytes.fromhex(inp["alice_ratchet_kem_seed"]),
                                     lambda alg, pk: (ct, ss))
    from client.protocol.qkd import QkdKeys

    initial, _ = initiate(p["alice"], "alice", "SAE_ALICE", p["bundle"],
                          QkdKeys((inp["qkd_key_id"],), (bytes.fromhex(inp["qkd_key"]),)),
                          randomness=randomness)
    inp["initial_signature"] = initial.signature.hex()
    doc = {
        "description": (
            "qsecret handshake v1 test vector. Inputs are seeds plus the values that are "
            "random in the protocol (ML-KEM encapsulation output, hedged ML-DSA signature "
            "halves), recorded once. Outputs must match byte for byte; see "
            "tests/protocol/vectors_lib.py for how each is computed."
        ),
        "inputs": inp,
        "outputs": build(inp),
    }
    OUT.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
