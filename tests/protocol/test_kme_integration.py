"""Two parties in one process run the handshake and 1000+ ratcheted messages with QKD keys
fetched over mTLS from two real KME processes (``qsecret kme pair``, emulated BB84 link)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from client.protocol import Message, QkdKeys, RatchetConfig, Session, parse_bundle
from client.protocol.bundle import generate_prekeys
from keysource.kme.client import KmeUnavailable, SaeClient
from keysource.kme.runtime import SAE_A, SAE_B
from tests.kme.conftest import start_pair

from .helpers import identity

MESSAGES = 1100
DEADLINE_S = 120.0


def _fetch(call, *args, deadline: float) -> list:
    """Retry a KME call while the pool is still filling (503), within the deadline."""
    while True:
        try:
            return call(*args)
        except KmeUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _keys(items) -> QkdKeys:
    return QkdKeys(tuple(k.key_ID for k in items), tuple(k.key for k in items))


@pytest.mark.slow
def test_handshake_and_1000_messages_with_keys_from_real_kmes(tmp_path: Path) -> None:
    kmes = start_pair(tmp_path / "kme", "--link", "emulated", "--seed", "7")
    deadline = time.monotonic() + DEADLINE_S
    try:
        with kmes.alice() as kme_a, kmes.bob() as kme_b:
            def enc(client: SaeClient, slave: str, count: int) -> QkdKeys | None:
                if not count:
                    return None
                return _keys(_fetch(lambda: client.get_enc_keys(slave, number=count),
                                    deadline=deadline))

            def dec(client: SaeClient, master: str, ids: tuple[str, ...]) -> QkdKeys | None:
                if not ids:
                    return None
                return _keys(_fetch(lambda: client.get_dec_keys(master, list(ids)),
                                    deadline=deadline))

            config = RatchetConfig(refresh_interval=50)
            bob_id = identity("bob")
            bundle, secrets = generate_prekeys(bob_id, "bob", sae_id=SAE_B,
                                               kme_hint=kmes.url_b, one_time_count=1)
            fetched = parse_bundle(bundle.encode(), expected_handle="bob")
            alice = Session.initiate(identity("alice"), "alice", SAE_A, fetched,
                                     enc(kme_a, fetched.sae_id, 1), config=config)
            first = alice.encrypt(b"hello over QKD").wire
            initial = Session.peek_initial(first)
            bob, events = Session.accept(first, bob_id, "bob", SAE_B, bundle, secrets,
                                         dec(kme_b, initial.initiator_sae_id,
                                             initial.qkd_key_ids), config=config)
            assert events[0].plaintext == b"hello over QKD"
            assert alice.status().handshake == "QKD+ML-KEM-768+X25519"

            ends = {"alice": (alice, kme_a), "bob": (bob, kme_b)}
            rng = random.Random(5)
            sent = turns = 0
            sender = "bob"
            while sent < MESSAGES:
                receiver = "alice" if sender == "bob" else "bob"
                s_session, s_kme = ends[sender]
                r_session, r_kme = ends[receiver]
                for _ in range(rng.randint(1, 40)):
                    text = f"{sender} {sent}".encode()
                    plan = s_session.send_plan()
                    out = s_session.encrypt(text, enc(s_kme, s_session.peer_sae_id,
                                                      plan.qkd_keys))
                    turns += out.turn
                    assert not out.degraded and out.sources[0] == "QKD"
                    got = r_session.decrypt(out.wire, dec(r_kme, r_session.peer_sae_id,
                                                          r_session.qkd_needed(out.wire)))
                    assert [m.plaintext for m in got if isinstance(m, Message)] == [text]
                    assert got[0].sources == ("QKD", "ML-KEM-768", "X25519")
                    sent += 1
                sender = receiver
            assert turns >= 30  # every conversation turn and every 50-message refresh
            assert time.monotonic() < deadline
    finally:
        kmes.process.stop()
