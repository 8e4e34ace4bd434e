"""A third user on the KME pair (issue 16: "Any KME serves any number of SAEs"): carol,
enrolled with ``qsecret kme pki issue-sae`` and using alice's KME, chats with alice (same
KME: keys from that KME's own store) and with bob (across the link), every message
``QKD+ML-KEM-768+X25519``. An SAE enrolled but never seen by either KME is refused with a
503 that says why, not bound to the wrong KME."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from keysource.kme.client import KmeUnavailable, SaeClient
from keysource.kme.pki import Pki
from tests.conftest import full_sources
from tests.e2e.stack import Stack

pytestmark = pytest.mark.slow

USERS = ("alice", "bob", "carol")  # alice and carol at kme-alice, bob at kme-bob


def _client(stack: Stack, port: int, sae: str) -> SaeClient:
    pki = Pki(stack.root / "kme" / "pki")
    paths = pki.sae(sae)
    return SaeClient(f"https://127.0.0.1:{port}", ca=pki.ca_cert, cert=paths.cert,
                     key=paths.key)


def test_three_users_on_the_pair_chat_with_qkd_keys(tmp_path: Path, pq_backend: str) -> None:
    stack = Stack(tmp_path, keys_before_use=100)
    try:
        stack.start_relay()
        stack.start_kme()
        enrolled = subprocess.run(
            [sys.executable, "-m", "client", "kme", "pki", "issue-sae", "sae-carol",
             "--dir", str(stack.root / "kme" / "pki")], capture_output=True, text=True)
        assert enrolled.returncode == 0, enrolled.stderr
        for user in USERS:
            stack.init(user)
            stack.cli(user, "recv", check=True)  # its prekeys on the relay
        # The issue's steps: carol adds alice and writes first; then every other pair.
        pairs = [("carol", "alice"), ("alice", "bob"), ("carol", "bob")]
        for sender, receiver in pairs:
            stack.cli(sender, "contacts", "add", receiver, check=True)
            stack.cli(sender, "send", receiver, "-", check=True,
                      stdin="\n".join(f"{sender}->{receiver} {i}" for i in range(3)))
        for user in USERS:
            stack.cli(user, "recv", check=True)
        for sender, receiver in pairs:  # and back, on the sessions the first messages made
            stack.cli(receiver, "send", sender, f"{receiver}->{sender} back", check=True)
        for user in USERS:
            stack.cli(user, "recv", check=True)
        full = full_sources(pq_backend)
        for sender, receiver in pairs:
            view = stack.history(receiver, sender)
            texts = [m["text"] for m in view]
            assert texts[:3] == [f"{sender}->{receiver} {i}" for i in range(3)], texts
            assert f"{receiver}->{sender} back" in texts
            back = stack.history(sender, receiver)
            assert all(m["keys"] in full for m in view + back), [
                m["keys"] for m in view + back]

        # Keys for carol and alice came from kme-alice's own store, not over the link.
        with _client(stack, stack.port_a, "sae-alice") as alice:
            status = alice.get_status("sae-carol")
            assert status.target_KME_ID == "kme-alice"
            keys = alice.get_enc_keys("sae-carol", number=1)
            assert keys[0].path == ("kme-alice",)
        with _client(stack, stack.port_a, "sae-carol") as carol:
            fetched = carol.get_dec_keys("sae-alice", [keys[0].key_ID])
            assert fetched[0].key == keys[0].key

        # An SAE enrolled but never seen by either KME: a clear refusal, no key bound.
        Pki(stack.root / "kme" / "pki").issue_sae("sae-erin")
        with _client(stack, stack.port_b, "sae-bob") as bob, \
                pytest.raises(KmeUnavailable, match="has not called either KME"):
            bob.get_enc_keys("sae-erin", number=1)
    finally:
        stack.stop()


def test_a_third_sae_on_two_serve_processes(tmp_path: Path) -> None:
    """The old two-KME link (``qsecret kme serve --role``, one process each): carol at
    alice's KME gets keys with alice from that KME's store and with bob over the link, both
    ways; bob's KME learns over the KME channel that carol is served at alice's."""
    from keysource.kme.defaults import SAE_A, SAE_B
    from tests.kme.test_link import start_serve, wait_for_keys
    from tests.ports import free_port

    init = subprocess.run(
        [sys.executable, "-m", "client", "kme", "pki", "init", "--dir", str(tmp_path / "pki")],
        capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    pki = Pki(tmp_path / "pki")
    pki.issue_sae("sae-carol")
    port_a, port_b, link_port = free_port(), free_port(), free_port()
    bob_kme = start_serve(tmp_path, "bob", port_b, port_a, link_port)
    alice_kme = None
    try:
        bob_kme.wait_for(r"^link listening on ")
        alice_kme = start_serve(tmp_path, "alice", port_a, port_b, link_port)

        def client(port: int, sae: str) -> SaeClient:
            paths = pki.sae(sae)
            return SaeClient(f"https://127.0.0.1:{port}", ca=pki.ca_cert, cert=paths.cert,
                             key=paths.key)

        with client(port_a, SAE_A) as alice, client(port_b, SAE_B) as bob, \
                client(port_a, "sae-carol") as carol:
            wait_for_keys(alice, SAE_B, 6, alice_kme)
            with pytest.raises(KmeUnavailable, match="has not called either KME"):
                bob.get_enc_keys("sae-carol", number=1)  # nobody serves carol yet
            assert carol.get_status(SAE_A).target_KME_ID == "kme-alice"  # she calls her KME
            for master, slave, master_id, slave_id in (
                    (alice, carol, SAE_A, "sae-carol"), (carol, alice, "sae-carol", SAE_A),
                    (bob, carol, SAE_B, "sae-carol"), (carol, bob, "sae-carol", SAE_B)):
                sent = master.get_enc_keys(slave_id, number=2)
                got = slave.get_dec_keys(master_id, [k.key_ID for k in sent])
                assert [(k.key_ID, k.key) for k in got] == [(k.key_ID, k.key) for k in sent]
                same_kme = "sae-carol" in (master_id, slave_id) and SAE_B not in (
                    master_id, slave_id)
                if same_kme:
                    assert sent[0].path == ("kme-alice",)
                else:
                    assert len(sent[0].path) == 2, sent[0].path
            # carol's profile now names bob's KME: her first call there moves her, and
            # alice's KME (told over the KME channel) binds her keys across the link; bob's
            # come from his KME's own store.
            with client(port_b, "sae-carol") as moved:
                assert moved.get_status(SAE_B).target_KME_ID == "kme-bob"
                for master, slave, master_id, slave_id, path in (
                        (alice, moved, SAE_A, "sae-carol", 2), (bob, moved, SAE_B, "sae-carol", 1),
                        (moved, alice, "sae-carol", SAE_A, 2)):
                    sent = master.get_enc_keys(slave_id, number=2)
                    got = slave.get_dec_keys(master_id, [k.key_ID for k in sent])
                    assert [(k.key_ID, k.key) for k in got] == [(k.key_ID, k.key) for k in sent]
                    assert len(sent[0].path) == path, (master_id, slave_id, sent[0].path)
    finally:
        for process in (alice_kme, bob_kme):
            if process is not None:
                process.stop()
