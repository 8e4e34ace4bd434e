"""KMEs fed by the real emulated QKD link: a ``qsecret kme pair`` process and two
``qsecret kme serve`` processes linked over TCP, fetched over HTTPS with mutual TLS."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from keysource.kme.client import SaeClient
from keysource.kme.pki import Pki
from keysource.kme.runtime import KME_A, KME_B, SAE_A, SAE_B
from tests.ports import free_port

from .conftest import KmeProcess, Pair, qsecret_cmd, start_kme, start_pair

FILL_TIMEOUT_S = 45.0


def wait_for_keys(client: SaeClient, slave: str, count: int, process: KmeProcess) -> int:
    deadline = time.monotonic() + FILL_TIMEOUT_S
    while time.monotonic() < deadline:
        stored = client.get_status(slave).stored_key_count
        if stored >= count:
            return stored
        assert process.proc.poll() is None, "\n".join(process.lines[-20:])
        time.sleep(0.2)
    process.drain()
    raise AssertionError("the link did not fill the pool:\n" + "\n".join(process.lines[-20:]))


@pytest.mark.slow
def test_pair_fills_from_the_emulated_link_and_serves_curl(tmp_path: Path) -> None:
    pair = start_pair(tmp_path, "--link", "emulated", "--seed", "7", "--status-interval", "0.5")
    try:
        with pair.alice() as alice, pair.bob() as bob:
            wait_for_keys(alice, SAE_B, 4, pair.process)
            wait_for_keys(bob, SAE_A, 4, pair.process)
            line = pair.process.wait_for(r"QBER (\d+\.\d+)% \| blocks (\d+) aborted (\d+)")
            # Default 25 km link: QBER near the 1 % misalignment, far below the 11 % threshold.
            assert 0.0 < float(line.group(1)) < 5.0
            if shutil.which("curl"):
                a = pair.pki.sae(SAE_A)
                out = subprocess.run(
                    ["curl", "-sS", "--fail-with-body", "--cacert", str(pair.pki.ca_cert),
                     "--cert", str(a.cert), "--key", str(a.key),
                     f"{pair.url_a}/api/v1/keys/{SAE_B}/enc_keys?number=2"],
                    capture_output=True, text=True, timeout=30,
                )
                assert out.returncode == 0, out.stderr + out.stdout
                sent_ids = [k["key_ID"] for k in json.loads(out.stdout)["keys"]]
                sent = {k["key_ID"]: k["key"] for k in json.loads(out.stdout)["keys"]}
                got = bob.get_dec_keys(SAE_A, sent_ids)
                assert {k.key_ID: base64.b64encode(k.key).decode() for k in got} == sent
            keys = alice.get_enc_keys(SAE_B, number=2)
            assert [k.key for k in bob.get_dec_keys(SAE_A, [k.key_ID for k in keys])] == [
                k.key for k in keys
            ]
    finally:
        pair.process.stop()


@pytest.mark.slow
def test_full_intercept_resend_aborts_every_block(tmp_path: Path) -> None:
    pair = start_pair(tmp_path, "--link", "emulated", "--seed", "8", "--eve-fraction", "1",
                      "--status-interval", "0.5")
    try:
        line = pair.process.wait_for(r"QBER (\d+\.\d+)% \| blocks (\d+) aborted (\d+)")
        while int(line.group(2)) < 2:
            line = pair.process.wait_for(
                r"QBER (\d+\.\d+)% \| blocks (\d+) aborted (\d+)", start=len(pair.process.lines)
            )
        assert line.group(2) == line.group(3), "a block survived full intercept-resend"
        # ~25 % expected; the 2048-bit sample gives sigma ~1 %, so 0.18..0.32 is > 5 sigma.
        assert 18.0 < float(line.group(1)) < 32.0
        with pair.alice() as alice:
            assert alice.get_status(SAE_B).stored_key_count == 0
    finally:
        pair.process.stop()


def start_serve(data: Path, role: str, port: int, peer_port: int, link_port: int) -> KmeProcess:
    return start_kme(
        ["serve", "--role", role, "--data", str(data), "--port", str(port),
         "--peer-url", f"https://127.0.0.1:{peer_port}", "--link-host", "127.0.0.1",
         "--link-port", str(link_port), "--status-interval", "1", "--max-keys", "2000"],
        ready_count=1,
    )


@pytest.mark.slow
def test_two_serve_processes_linked_over_tcp_agree(tmp_path: Path) -> None:
    init = subprocess.run(
        qsecret_cmd("kme", "pki", "init", "--dir", str(tmp_path / "pki")),
        capture_output=True, text=True, timeout=60,
    )
    assert init.returncode == 0, init.stderr
    port_a, port_b, link_port = free_port(), free_port(), free_port()
    bob_kme = start_serve(tmp_path, "bob", port_b, port_a, link_port)
    alice_kme = None
    try:
        bob_kme.wait_for(r"^link listening on ")
        alice_kme = start_serve(tmp_path, "alice", port_a, port_b, link_port)
        view = Pair(tmp_path, alice_kme)
        pki = Pki(tmp_path / "pki")
        url_a, url_b = alice_kme.urls[KME_A], bob_kme.urls[KME_B]
        a, b = pki.sae(SAE_A), pki.sae(SAE_B)
        with SaeClient(url_a, ca=pki.ca_cert, cert=a.cert, key=a.key) as alice, \
                SaeClient(url_b, ca=pki.ca_cert, cert=b.cert, key=b.key) as bob:
            wait_for_keys(alice, SAE_B, 6, alice_kme)
            wait_for_keys(bob, SAE_A, 6, bob_kme)
            # Master at the allocator (alice's KME), slave at the follower.
            sent = alice.get_enc_keys(SAE_B, number=3, size=512)
            got = bob.get_dec_keys(SAE_A, [k.key_ID for k in sent])
            assert [(k.key_ID, k.key) for k in got] == [(k.key_ID, k.key) for k in sent]
            # Master at the follower: bob's KME asks alice's KME to allocate.
            sent = bob.get_enc_keys(SAE_A, number=2)
            got = alice.get_dec_keys(SAE_B, [k.key_ID for k in sent])
            assert [(k.key_ID, k.key) for k in got] == [(k.key_ID, k.key) for k in sent]
        status = subprocess.run(
            qsecret_cmd("kme", "status", "--url", url_b, "--data", str(view.data),
                        "--sae", SAE_B),
            capture_output=True, text=True, timeout=30,
        )
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith(f"{KME_B} (follower, peer {KME_A})"), status.stdout
        assert "link up" in status.stdout, status.stdout + "\n".join(bob_kme.lines[-10:])
    finally:
        if alice_kme is not None:
            alice_kme.stop()
        bob_kme.stop()
