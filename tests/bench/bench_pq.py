"""Throughput of every available KEM and signature, per backend, beside classical baselines.

    python tests/bench/bench_pq.py --quick --json OUT.json

Baselines measured in the same run: X25519 key exchange (ops/s) and AES-256-GCM (MB/s).
Figures are medians of several time-boxed rounds; compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keysource import pq
from tests.bench._common import rate, write_json

# In --quick mode liboqs (which offers dozens of algorithms) is sampled on these.
QUICK_LIBOQS = {
    "ML-KEM-768", "ML-KEM-1024", "FrodoKEM-976-AES", "Classic-McEliece-348864", "BIKE-L1",
    "ML-DSA-65", "Falcon-512", "SLH_DSA_PURE_SHA2_128F",
}


def measure(args: argparse.Namespace) -> dict:
    seconds, rounds = (0.15, 3) if args.quick else (1.0, 5)
    ops: list[dict] = []

    def record(backend: str, alg: str, op: str, fn) -> None:  # type: ignore[no-untyped-def]
        per_s = rate(fn, seconds=seconds, rounds=rounds)
        ops.append({"backend": backend, "alg": alg, "op": op, "per_s": round(per_s, 1)})

    for backend in pq.BACKENDS:
        status = pq.backend_status(backend)
        if not status.available:
            print(f"# backend {backend} skipped: {status.detail}")
            continue
        for alg in status.kems:
            if args.quick and backend == "liboqs" and alg not in QUICK_LIBOQS:
                continue
            kem = pq.get_kem(alg, backend)
            keypair = kem.generate_keypair()
            ciphertext, _ = kem.encapsulate(keypair.public_key)
            record(backend, alg, "keygen", kem.generate_keypair)
            record(backend, alg, "encaps", lambda k=kem, p=keypair.public_key: k.encapsulate(p))
            record(backend, alg, "decaps",
                   lambda k=kem, s=keypair.secret_key, c=ciphertext: k.decapsulate(s, c))
        for alg in status.signatures:
            if args.quick and backend == "liboqs" and alg not in QUICK_LIBOQS:
                continue
            scheme = pq.get_signature(alg, backend)
            keypair = scheme.generate_keypair()
            message = os.urandom(64)
            signature = scheme.sign(keypair.secret_key, message)
            record(backend, alg, "sign",
                   lambda s=scheme, k=keypair.secret_key, m=message: s.sign(k, m))
            record(backend, alg, "verify",
                   lambda s=scheme, k=keypair.public_key, g=signature, m=message: s.verify(k, m, g))

    peer = x25519.X25519PrivateKey.generate().public_key()
    own = x25519.X25519PrivateKey.generate()
    x25519_per_s = rate(lambda: own.exchange(peer), seconds=seconds, rounds=rounds)
    aead, nonce, block = AESGCM(os.urandom(32)), os.urandom(12), os.urandom(1 << 20)
    aes_blocks_per_s = rate(lambda: aead.encrypt(nonce, block, None), seconds=seconds,
                            rounds=rounds)
    return {
        "ops": ops,
        "baseline": {
            "x25519_per_s": round(x25519_per_s, 1),
            "aes256gcm_mb_per_s": round(aes_blocks_per_s * (1 << 20) / 1e6, 1),
        },
    }


def print_table(data: dict) -> None:
    x = data["baseline"]["x25519_per_s"]
    print(f"{'backend':8} {'algorithm':28} {'op':7} {'ops/s':>12} {'vs X25519':>10}")
    for row in data["ops"]:
        print(f"{row['backend']:8} {row['alg']:28} {row['op']:7} {row['per_s']:>12,.0f}"
              f" {row['per_s'] / x:>9.2f}x")
    print(f"baseline X25519 exchange: {x:,.0f}/s; "
          f"AES-256-GCM: {data['baseline']['aes256gcm_mb_per_s']:,.0f} MB/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short rounds, sampled liboqs")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON here")
    args = parser.parse_args()
    data = measure(args)
    print_table(data)
    write_json(args.json, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
