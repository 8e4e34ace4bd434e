"""Triple-ratchet throughput, handshake latency and wire overhead, beside raw AES-256-GCM.

    python tests/bench/bench_protocol.py --quick --json OUT.json

msgs_per_s: 200-byte messages encrypted by one party and decrypted by the other through the
ratchet (one-sided stream with the default refresh: a PQ + QKD turn every 100 messages,
amortised); symmetric_msgs_per_s: the same without refresh turns.
aead_baseline_msgs_per_s: raw AES-256-GCM encrypt + decrypt of the same payloads, same run.
handshake_ms: median of bundle parse (signatures checked) + initiate + accept, per KEM profile.
overhead_bytes / turn_overhead_bytes: wire bytes beyond the 200-byte plaintext.
QKD keys are random bytes with UUID key_IDs (the KME round trip is not part of this figure).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client.protocol import Identity, QkdKeys, RatchetConfig, Session, parse_bundle
from client.protocol.bundle import conservative_kem_available, generate_prekeys
from tests.bench._common import rate, write_json

PAYLOAD = os.urandom(200)


def _qkd(count: int) -> QkdKeys | None:
    if not count:
        return None
    return QkdKeys(tuple(str(uuid.uuid4()) for _ in range(count)),
                   tuple(os.urandom(32) for _ in range(count)))


class Stream:
    """Alice streams to Bob; QKD keys handed to Bob by key_ID as a KME pair would."""

    def __init__(self, config: RatchetConfig) -> None:
        bob = Identity.generate()
        bundle, secrets = generate_prekeys(bob, "bob", sae_id="SAE_B", one_time_count=1)
        self.keys: dict[str, bytes] = {}
        alice = Session.initiate(Identity.generate(), "alice", "SAE_A", bundle,
                                 self.enc(1), config=config)
        wire = alice.encrypt(b"hello").wire
        self.bob, _ = Session.accept(wire, bob, "bob", "SAE_B", bundle, secrets,
                                     self.dec(Session.peek_initial(wire).qkd_key_ids),
                                     config=config)
        self.alice = alice
        self.last_wire = b""
        self.exchange(self.bob, self.alice)  # bob answers: alice's next message turns
        self.exchange(self.alice, self.bob)

    def enc(self, count: int) -> QkdKeys | None:
        keys = _qkd(count)
        if keys:
            self.keys.update(zip(keys.key_ids, keys.keys, strict=True))
        return keys

    def dec(self, ids: tuple[str, ...]) -> QkdKeys | None:
        return QkdKeys(ids, tuple(self.keys.pop(i) for i in ids)) if ids else None

    def exchange(self, sender: Session, receiver: Session) -> None:
        wire = sender.encrypt(PAYLOAD, self.enc(sender.send_plan().qkd_keys)).wire
        events = receiver.decrypt(wire, self.dec(receiver.qkd_needed(wire)))
        assert events[0].plaintext == PAYLOAD
        self.last_wire = wire

    def step(self) -> None:
        self.exchange(self.alice, self.bob)


def handshake_ms(profile: str, conservative: str | None, count: int) -> float:
    bob = Identity.generate()
    bundle, secrets = generate_prekeys(bob, "bob", sae_id="SAE_B", one_time_count=count,
                                       conservative=conservative)
    alice = Identity.generate()
    times = []
    for i in range(count):
        # what the relay serves: the signed part plus the next one-time prekey
        served = type(bundle)(bundle.handle, bundle.identity, bundle.signed,
                              bundle.signed_signature, bundle.one_time[i : i + 1], bundle.part)
        fetched_bytes = served.encode()
        qkd = _qkd(1)
        start = time.perf_counter()
        fetched = parse_bundle(fetched_bytes)  # both signatures checked
        session = Session.initiate(alice, "alice", "SAE_A", fetched, qkd)
        wire = session.encrypt(b"hi").wire
        Session.accept(wire, bob, "bob", "SAE_B", bundle, secrets, qkd)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(args: argparse.Namespace) -> dict:
    seconds, rounds, handshakes = (0.3, 3, 15) if args.quick else (2.0, 5, 60)
    stream = Stream(RatchetConfig())
    msgs_per_s = rate(stream.step, seconds=seconds, rounds=rounds)
    symmetric = Stream(RatchetConfig(refresh_interval=10**9))
    symmetric_per_s = rate(symmetric.step, seconds=seconds, rounds=rounds)
    overhead = len(symmetric.last_wire) - len(PAYLOAD)

    aead = AESGCM(os.urandom(32))
    nonce = os.urandom(12)

    def baseline() -> None:
        assert aead.decrypt(nonce, aead.encrypt(nonce, PAYLOAD, None), None) == PAYLOAD

    baseline_per_s = rate(baseline, seconds=seconds, rounds=rounds)

    turn = Stream(RatchetConfig())
    turn.exchange(turn.bob, turn.alice)
    turn.exchange(turn.alice, turn.bob)  # a conversation turn, one QKD key_ID
    turn_overhead = len(turn.last_wire) - len(PAYLOAD)

    profiles = {"ML-KEM-768": handshake_ms("ML-KEM-768", None, handshakes)}
    conservative = conservative_kem_available()
    if conservative:
        profiles[f"ML-KEM-768+{conservative}"] = handshake_ms("conservative", conservative,
                                                              max(3, handshakes // 5))
    else:
        print("# conservative profile skipped: liboqs is not available here")
    return {
        "msgs_per_s": round(msgs_per_s, 1),
        "symmetric_msgs_per_s": round(symmetric_per_s, 1),
        "aead_baseline_msgs_per_s": round(baseline_per_s, 1),
        "handshake_ms": {k: round(v, 3) for k, v in profiles.items()},
        "overhead_bytes": overhead,
        "turn_overhead_bytes": turn_overhead,
        "payload_bytes": len(PAYLOAD),
        "targets": {"msgs_per_s": 20000, "handshake_ms": 5.0, "overhead_bytes": 100},
    }


def print_report(data: dict) -> None:
    base = data["aead_baseline_msgs_per_s"]
    print(f"ratchet, 200-byte messages (refresh every 100): {data['msgs_per_s']:>10,.0f} msg/s "
          f"({data['msgs_per_s'] / base:.2f}x of raw AES-256-GCM)")
    print(f"ratchet, symmetric steps only:                  {data['symmetric_msgs_per_s']:>10,.0f}"
          f" msg/s ({data['symmetric_msgs_per_s'] / base:.2f}x)")
    print(f"baseline raw AES-256-GCM encrypt+decrypt:       {base:>10,.0f} msg/s")
    for profile, ms in data["handshake_ms"].items():
        print(f"handshake {profile}: {ms:.2f} ms (median; target <= 5 ms for ML-KEM-768)")
    print(f"overhead: {data['overhead_bytes']} bytes per ordinary message (target <= 100), "
          f"{data['turn_overhead_bytes']} per ratchet-turn message")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short rounds, fewer handshakes")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON here")
    args = parser.parse_args()
    data = measure(args)
    print_report(data)
    write_json(args.json, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
