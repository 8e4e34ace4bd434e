"""No SAE can starve the others (issue 15, item 7), with real KME processes and the real link.

The attack that stopped QKD for everybody: an SAE with a valid certificate (mallory) binds keys
to a slave that does not exist (``nobody-at-all``), or to real slaves that never fetch them.
Bound keys never expired and counted against the pool's room, so the link stopped refilling and
bob's enc_keys got 503. Now: an unknown slave is a 400 naming it; bound-but-unfetched keys are
capped per SAE pair and per master (503 naming the quota); the link refills around bound keys;
and unfetched bindings expire at both KMEs, their keys destroyed, never handed to anybody.
"""

from __future__ import annotations

import shutil
import sqlite3
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keysource.kme.client import KmeBadRequest, KmeUnavailable
from keysource.kme.pki import Pki
from keysource.kme.pool import EXPIRED_SAE
from keysource.kme.runtime import KME_A, KME_B, SAE_A, SAE_B, pool_path

from .conftest import Pair, RawHttp, start_pair

MAX_KEYS = 400
PER_PAIR = 40
PER_MASTER = 60
MALLORY = "sae-mallory"  # at KME A, with a valid certificate
CAROL = "sae-carol"  # a real SAE at KME B that never fetches
DAVE = "sae-dave"  # mallory's accomplice at KME B
WAIT_S = 120.0  # the emulated link shares 2 cores with other tests: generous, never slept


def enrol(pair: Pair, *sae_ids: str) -> None:
    for sae_id in sae_ids:
        if not pair.pki.sae(sae_id).cert.exists():
            pair.pki.issue_sae(sae_id)


def stats(pair: Pair, url: str) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(pair.pki.ca_cert))
    paths = pair.pki.sae(SAE_A)
    ctx.load_cert_chain(str(paths.cert), str(paths.key))
    with RawHttp(url, ctx) as http:
        pool: dict[str, Any] = http.get("/kme/v1/stats").json()["pool"]
    return pool


def wait_until(what: str, check: Any, timeout_s: float = WAIT_S) -> Any:
    """Poll a KME's observable state until ``check()`` is truthy (the link's pace is not ours)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def start(tmp: Path, *extra: str) -> Pair:
    """A pair with the emulated link (not --link none: refills are what is tested)."""
    from .conftest import start_kme

    process = start_kme(
        ["pair", "--data", str(tmp), "--port-a", "0", "--port-b", "0", "--status-interval", "0",
         "--max-keys", str(MAX_KEYS), "--max-key-per-request", "16",
         "--keys-ready", str(MAX_KEYS), "--seed", "15", *extra],
        ready_count=2,
    )
    pair = Pair(tmp, process)
    try:
        process.wait_for("^keys ready", timeout_s=WAIT_S)
    except BaseException:
        process.stop()
        raise
    return pair


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    pair = start(tmp_path_factory.mktemp("starve"), "--max-bound-per-pair", str(PER_PAIR),
                 "--max-bound-per-master", str(PER_MASTER))
    try:
        enrol(pair, MALLORY, CAROL, DAVE)
        # A KME of a pair serves the SAEs that call it: carol and dave call B, mallory A.
        for url, sae, other in ((pair.url_b, CAROL, SAE_A), (pair.url_b, DAVE, SAE_A),
                                (pair.url_a, MALLORY, SAE_B)):
            with pair.client(url, sae) as client:
                client.get_status(other)
        yield pair
    finally:
        pair.process.stop()


def test_keys_for_an_unknown_slave_are_refused_naming_it(attacked: Pair) -> None:
    before = stats(attacked, attacked.url_b)
    with attacked.client(attacked.url_a, MALLORY) as mallory:
        for _ in range(3):
            with pytest.raises(KmeBadRequest, match="unknown slave_SAE_ID nobody-at-all") as err:
                mallory.get_enc_keys("nobody-at-all", number=16)
            assert {"slave_SAE_ID": "nobody-at-all", "registered": False} in err.value.details
        with pytest.raises(KmeBadRequest, match="nobody-at-all"):
            mallory.get_status("nobody-at-all")
    after = stats(attacked, attacked.url_b)
    assert after["bound_slave"] == before["bound_slave"] == 0
    assert stats(attacked, attacked.url_a)["bound_master"] == 0


def test_quotas_stop_the_attack_and_bob_still_gets_keys_while_the_link_refills(
        attacked: Pair) -> None:
    accepted = {SAE_B: 0, CAROL: 0}
    to_bob: list[str] = []
    with attacked.client(attacked.url_a, MALLORY) as mallory:
        # bob never fetches what mallory binds to him: the pair quota stops her.
        for _ in range(2):
            to_bob += [k.key_ID for k in mallory.get_enc_keys(SAE_B, number=16)]
            accepted[SAE_B] += 16
        with pytest.raises(KmeUnavailable, match="per_pair quota") as err:
            mallory.get_enc_keys(SAE_B, number=16)
        (refusal,) = err.value.details
        assert refusal["quota"] == "per_pair" and refusal["slave_SAE_ID"] == SAE_B
        assert (refusal["bound"], refusal["limit"]) == (32, PER_PAIR)
        # ... and over all her slaves, the master quota.
        accepted[CAROL] += len(mallory.get_enc_keys(CAROL, number=16))
        with pytest.raises(KmeUnavailable, match="per_master quota") as err:
            mallory.get_enc_keys(CAROL, number=16)
        assert err.value.details[0]["quota"] == "per_master"
        assert err.value.details[0]["master_SAE_ID"] == MALLORY
    assert accepted == {SAE_B: 32, CAROL: 16}
    held_b = stats(attacked, attacked.url_b)
    assert held_b["bound_slave"] == 48  # exactly what she got; the refusals bound nothing
    assert stats(attacked, attacked.url_a)["bound_master"] == 0  # refused keys went back
    # Her accomplice at KME B binds to alice (at A, the allocator), who never fetches.
    with attacked.client(attacked.url_b, DAVE) as dave:
        dave.get_enc_keys(SAE_A, number=16)
        dave.get_enc_keys(SAE_A, number=16)
        with pytest.raises(KmeUnavailable, match="per_pair quota"):
            dave.get_enc_keys(SAE_A, number=16)
    assert stats(attacked, attacked.url_a)["bound_slave"] == 32

    # bob and alice still get keys, both ways, at once.
    with attacked.bob() as bob, attacked.alice() as alice:
        for _ in range(3):
            sent = bob.get_enc_keys(SAE_A, number=16)
            assert alice.get_dec_keys(SAE_B, [k.key_ID for k in sent]) == sent
            sent = alice.get_enc_keys(SAE_B, number=16)
            assert bob.get_dec_keys(SAE_A, [k.key_ID for k in sent]) == sent

    # The link refills both pools to MAX_KEYS free keys around the bound ones.
    def refilled(url: str) -> dict[str, Any] | None:
        pool = stats(attacked, url)
        bound = pool["bound_master"] + pool["bound_slave"]
        return pool if pool["free"] >= MAX_KEYS and pool["stored"] >= MAX_KEYS + bound else None

    for url, bound in ((attacked.url_a, 32), (attacked.url_b, 48)):
        pool = wait_until(f"the link to refill {url}", lambda url=url: refilled(url))
        assert pool["bound_master"] + pool["bound_slave"] == bound
    # Once bob fetches what mallory bound to him, her quotas have room again.
    with attacked.bob() as bob:
        assert len(bob.get_dec_keys(MALLORY, to_bob[:16]) + bob.get_dec_keys(
            MALLORY, to_bob[16:])) == 32
    with attacked.client(attacked.url_a, MALLORY) as mallory:
        assert len(mallory.get_enc_keys(SAE_B, number=16)) == 16


def test_unfetched_bindings_expire_at_both_kmes_and_their_keys_are_destroyed(
        tmp_path: Path) -> None:
    ttl_min = 0.1  # 6 s: far longer than an enc_keys, short for a test
    pair = start(tmp_path, "--binding-ttl", str(ttl_min))
    try:
        enrol(pair, MALLORY, DAVE)
        with pair.client(pair.url_a, MALLORY) as mallory, \
                pair.client(pair.url_b, DAVE) as dave:
            to_bob = [k.key_ID for k in mallory.get_enc_keys(SAE_B, number=8)]  # held at B
            to_alice = [k.key_ID for k in dave.get_enc_keys(SAE_A, number=8)]  # held at A
        for url, role in ((pair.url_b, "bound_slave"), (pair.url_a, "bound_slave")):
            wait_until(f"{role} at {url} to expire", lambda url=url, role=role:
                       stats(pair, url)[role] == 0)
        for kme_id, ids in ((KME_B, to_bob), (KME_A, to_alice)):
            db = sqlite3.connect(f"file:{pool_path(pair.data, kme_id)}?mode=ro", uri=True)
            try:
                marks = ",".join("?" * len(ids))
                (held,) = db.execute(f"SELECT COUNT(*) FROM keys WHERE key_id IN ({marks})",
                                     ids).fetchone()
                journal = dict(db.execute(
                    f"SELECT key_id, sae FROM delivered WHERE key_id IN ({marks})", ids))
            finally:
                db.close()
            assert held == 0, f"{kme_id} still holds expired keys"
            assert journal == {key_id: EXPIRED_SAE for key_id in ids}, kme_id
        # Destroyed, not handed to anybody: the slaves asking now get "unknown".
        with pair.bob() as bob, pair.alice() as alice:
            with pytest.raises(KmeBadRequest, match="unknown or already delivered"):
                bob.get_dec_keys(MALLORY, to_bob)
            with pytest.raises(KmeBadRequest, match="unknown or already delivered"):
                alice.get_dec_keys(DAVE, to_alice)
            # Keys fetched in time are unaffected by the lifetime.
            sent = alice.get_enc_keys(SAE_B, number=4)
            assert bob.get_dec_keys(SAE_A, [k.key_ID for k in sent]) == sent
    finally:
        pair.process.stop()


# -- a trailing newline (or any SAE_ID breaking the rule) in every path ----------------------


def kme_http(pair: Pair, url: str, kme_id: str) -> RawHttp:
    ctx = ssl.create_default_context(cafile=str(pair.pki.ca_cert))
    paths = pair.pki.kme(kme_id)
    ctx.load_cert_chain(str(paths.cert), str(paths.key))
    return RawHttp(url, ctx)


def sae_http(pair: Pair, url: str, sae_id: str) -> RawHttp:
    ctx = ssl.create_default_context(cafile=str(pair.pki.ca_cert))
    paths = pair.pki.sae(sae_id)
    ctx.load_cert_chain(str(paths.cert), str(paths.key))
    return RawHttp(url, ctx)


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    pair = start_pair(tmp_path_factory.mktemp("sae-id-paths"))
    try:
        yield pair
    finally:
        pair.process.stop()


@pytest.mark.parametrize("bad", ["sae-bob%0A", "sae-bob%0D%0A", "sae-bob%0A%0A"])
def test_a_trailing_newline_is_refused_in_every_path(idle: Pair, bad: str) -> None:
    idle.fill(4)
    with sae_http(idle, idle.url_a, SAE_A) as alice, sae_http(idle, idle.url_b, SAE_B) as bob:
        for http, path in ((alice, f"/api/v1/keys/{bad}/status"),
                           (alice, f"/api/v1/keys/{bad}/enc_keys?number=1"),
                           (bob, f"/api/v1/keys/{bad}/dec_keys?key_ID={uuid.uuid4()}")):
            resp = http.get(path)
            assert resp.status_code == 400 and "invalid" in resp.json()["message"], path
        resp = alice.post(f"/api/v1/keys/{bad}/enc_keys", json={"number": 1})
        assert resp.status_code == 400 and "invalid slave_SAE_ID" in resp.json()["message"]
        resp = bob.post(f"/api/v1/keys/{bad}/dec_keys",
                        json={"key_IDs": [{"key_ID": str(uuid.uuid4())}]})
        assert resp.status_code == 400 and "invalid master_SAE_ID" in resp.json()["message"]
    newline = "sae-bob\n"
    # The KME-to-KME routes: the SAE lookup, an allocation and a pushed binding.
    with kme_http(idle, idle.url_b, KME_A) as from_a, kme_http(idle, idle.url_a, KME_B) as from_b:
        resp = from_a.get(f"/kme/v1/saes/{bad}")
        assert resp.status_code == 400, resp.text
        assert from_a.get(f"/kme/v1/saes/{SAE_B}").json() == {"SAE_ID": SAE_B,
                                                              "registered": True}
        resp = from_b.post("/kme/v1/allocate", json={
            "binding_id": str(uuid.uuid4()), "master_SAE_ID": SAE_B, "slave_SAE_ID": newline,
            "sizes": [256]})
        assert resp.status_code == 400 and "slave_SAE_ID" in resp.text
        key_id = str(uuid.uuid4())
        resp = from_a.post("/kme/v1/bindings", json={
            "binding_id": str(uuid.uuid4()), "master_SAE_ID": SAE_A, "slave_SAE_ID": newline,
            "master_kme": KME_A, "keys": [{"key_ID": key_id, "size": 256, "parts": [key_id]}]})
        assert resp.status_code == 400 and "invalid SAE_ID" in resp.text
        for body in ({"SAE_ID": newline}, {"SAE_ID": 7}, {}):  # "an SAE moved to me"
            resp = from_a.post("/kme/v1/served", json=body)
            assert resp.status_code == 400 and "SAE_ID" in resp.text, body
    with sae_http(idle, idle.url_a, SAE_A) as alice:  # an SAE may not move another one
        resp = alice.post("/kme/v1/served", json={"SAE_ID": SAE_B})
        assert resp.status_code in (401, 403), resp.text
    # The SAE client never sends such a value at all (tests/kme/test_etsi_api.py); with a
    # valid SAE_ID the same calls work.
    with idle.alice() as alice, idle.bob() as bob:
        sent = alice.get_enc_keys(SAE_B, number=1)
        assert bob.get_dec_keys(SAE_A, [sent[0].key_ID]) == sent


def test_a_stray_file_registers_nobody(idle: Pair) -> None:
    """Only a certificate from this CA, for that very SAE_ID, registers an SAE."""
    idle.fill(2)
    bob_cert = idle.pki.sae(SAE_B).cert.read_bytes()
    idle.pki.sae("sae-impostor").cert.write_bytes(bob_cert)  # CN=sae-bob: not this SAE
    with idle.alice() as alice, pytest.raises(KmeBadRequest, match="sae-impostor"):
        alice.get_enc_keys("sae-impostor", number=1)


# -- two ``kme serve`` processes with their own copies of the PKI: the peer is asked ---------


@pytest.mark.slow
def test_serve_kmes_ask_each_other_which_saes_exist_and_refuse_over_quota(
        tmp_path: Path) -> None:
    """KME A's PKI copy lacks carol (enrolled at B after the copy) and B's lacks mallory:
    A learns from B, over the KME-to-KME channel, that B serves carol; a slave neither knows
    is a 400; B's quota refusal reaches mallory through A as a 503 naming the quota."""
    from .conftest import KmeProcess, qsecret_cmd, start_kme
    from .test_link import free_port

    init = subprocess.run(qsecret_cmd("kme", "pki", "init", "--dir", str(tmp_path / "a" / "pki")),
                          capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    shutil.copytree(tmp_path / "a" / "pki", tmp_path / "b" / "pki")
    Pki(tmp_path / "a" / "pki").issue_sae(MALLORY)
    Pki(tmp_path / "b" / "pki").issue_sae(CAROL)
    port_a, port_b, link_port = free_port(), free_port(), free_port()

    def serve(role: str, data: Path, port: int, peer_port: int) -> KmeProcess:
        return start_kme(
            ["serve", "--role", role, "--data", str(data), "--port", str(port),
             "--peer-url", f"https://127.0.0.1:{peer_port}", "--link-host", "127.0.0.1",
             "--link-port", str(link_port), "--status-interval", "0", "--max-keys", "200",
             "--keys-ready", "100", "--max-bound-per-pair", "24"],
            ready_count=1,
        )

    kme_b = serve("bob", tmp_path / "b", port_b, port_a)
    kme_a = None
    try:
        kme_b.wait_for(r"^link listening on ")
        kme_a = serve("alice", tmp_path / "a", port_a, port_b)
        kme_a.wait_for("^keys ready", timeout_s=WAIT_S)
        kme_b.wait_for("^keys ready", timeout_s=WAIT_S)
        view_a = Pair(tmp_path / "a", kme_a)
        view_b = Pair(tmp_path / "b", kme_b)
        url_a, url_b = kme_a.urls[KME_A], kme_b.urls[KME_B]
        with view_a.client(url_a, MALLORY) as mallory, view_b.client(url_b, CAROL) as carol:
            carol.get_status(SAE_B)  # carol calls B: from now on B serves her
            with pytest.raises(KmeBadRequest, match="unknown slave_SAE_ID nobody-at-all"):
                mallory.get_enc_keys("nobody-at-all", number=8)
            sent = mallory.get_enc_keys(CAROL, number=16)  # known to A only through B
            with pytest.raises(KmeUnavailable, match="per_pair quota") as err:
                mallory.get_enc_keys(CAROL, number=16)
            assert err.value.details[0]["bound"] == 16
            assert carol.get_dec_keys(MALLORY, [k.key_ID for k in sent]) == sent
            assert len(mallory.get_enc_keys(CAROL, number=16)) == 16  # fetched: room again
        # bob is unaffected, both ways.
        with view_a.client(url_a, SAE_A) as alice, \
                view_b.client(url_b, SAE_B) as bob:
            # carol and bob are both B's: their keys come from B's own store.
            with view_b.client(url_b, CAROL) as carol:
                sent = bob.get_enc_keys(CAROL, number=4)
                assert sent[0].path == (KME_B,)
                assert carol.get_dec_keys(SAE_B, [k.key_ID for k in sent]) == sent
            sent = bob.get_enc_keys(SAE_A, number=4)
            assert alice.get_dec_keys(SAE_B, [k.key_ID for k in sent]) == sent
            sent = alice.get_enc_keys(SAE_B, number=4)
            assert bob.get_dec_keys(SAE_A, [k.key_ID for k in sent]) == sent
        assert stats(view_a, url_a)["bound_master"] == 0  # the refused binding was freed
    finally:
        if kme_a is not None:
            kme_a.stop()
        kme_b.stop()
