"""Network nodes as real processes (issue 16): ETSI 014 keys for SAEs two hops apart and on
one node, relay frames refused when tampered, replayed or misrouted, and kill -9 of the
trusted node in the middle of relays."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from keysource.kme.client import KmeBadRequest, KmeError, KmeUnavailable
from keysource.kme.network_node import RELAY_MASTER, RELAY_SLAVE
from keysource.kme.network_runtime import link_pool_path
from keysource.kme.pool import Binding, BoundKey, KeyPool
from keysource.kme.relay_store import LocalKeyStore
from keysource.network import key_relay
from tests.kme.conftest import RawHttp, qsecret_cmd

from .conftest import Network, start_network, stop_network

ROUTE = ("x", "m", "y")


def _stats(network: Network, node: str) -> dict[str, Any]:
    return network.stats(node)


def test_etsi_keys_over_two_hops_and_on_one_node_with_real_qkd_links(tmp_path: Path) -> None:
    network = start_network(tmp_path, "--frame-bits", "65536", "--keys-ready", "30")
    try:
        for name in ("x", "m", "y"):
            network.processes[name].wait_for(r"^keys ready")
        with network.client("x", "sae-x") as x, network.client("y", "sae-y") as y:
            # x -> m -> y: on both hops the sender is the link's allocator ...
            sent = x.get_enc_keys("sae-y", number=3)
            got = y.get_dec_keys("sae-x", [k.key_ID for k in sent])
            assert [k.key for k in got] == [k.key for k in sent]
            assert len({k.key for k in sent}) == 3 and all(len(k.key) == 32 for k in sent)
            # ... and y -> m -> x: on both it is the follower, who asks the allocator.
            back = y.get_enc_keys("sae-x", number=2)
            assert [k.key for k in x.get_dec_keys("sae-y", [k.key_ID for k in back])] == [
                k.key for k in back]
            # Neighbours: the link's own binding protocol, whichever end the master is at.
            with network.client("m", "sae-m") as m:
                to_m = x.get_enc_keys("sae-m", number=2)
                assert [k.key for k in m.get_dec_keys("sae-x", [k.key_ID for k in to_m])] == [
                    k.key for k in to_m]
                to_x = m.get_enc_keys("sae-x", number=1, size=512)
                assert [k.key for k in x.get_dec_keys("sae-m", [k.key_ID for k in to_x])] == [
                    k.key for k in to_x]
            status = x.get_status("sae-y")
            assert (status.source_KME_ID, status.target_KME_ID) == ("x", "y")
            # Two SAEs of one node: keys from the node's own store, no link spent.
            local = x.get_enc_keys("sae-x2", number=2)
            with network.client("x", "sae-x2") as x2:
                assert [k.key for k in x2.get_dec_keys("sae-x", [k.key_ID for k in local])] == [
                    k.key for k in local]
                # A relayed key is its slave's only: another SAE of the node gets nothing.
                with pytest.raises(KmeError):
                    x2.get_dec_keys("sae-y", [back[0].key_ID])
            with pytest.raises(KmeBadRequest, match="256 bits"):
                x.get_enc_keys("sae-y", number=1, size=512)
        relay = _stats(network, "m")["relay"]
        assert isinstance(relay, dict) and relay["forwarded"] == 5
        assert not any(relay["refused"].values())
        # A dec_keys answer is kept for its grace (in case the SAE lost it), but a node's own
        # claims of relay link keys are not: no copy of them stays on disk.
        for here, there, kept in (("m", "x", to_m), ("x", "m", to_x), ("m", "y", []),
                                  ("y", "m", [])):
            with KeyPool(link_pool_path(network.data, here, there)) as pool:
                assert pool.redeliverable_ids() == {k.key_ID for k in kept}, (here, there)
    finally:
        stop_network(network)


def test_an_eavesdropped_ring_link_is_routed_around_and_shows_its_alarm(
        tmp_path: Path) -> None:
    """x - a - y and x - b - y, an eavesdropper on a~y (the emulated link between a and y,
    QBER ~25 %, no new key). x and b run no links: the test fills x~a fuller than x~b, so x
    tries the way through a first, a refuses to relay over a~y, and x goes round through b."""
    ring = {"x": ["sae-x"], "a": [], "b": [], "y": ["sae-y"]}
    network = start_network(
        tmp_path, "--frame-bits", "65536", nodes=ring,
        links=[("x", "a"), ("a", "y", 1.0), ("x", "b"), ("b", "y")],
        per_node={"x": ["--link", "none"], "b": ["--link", "none"],
                  "a": ["--status-interval", "0.3"]})
    try:
        network.fill("x", "a", 300)
        network.fill("x", "b", 100)
        network.fill("b", "y", 100)
        # a's status line once a block of a~y was measured (x~a never runs: no QBER)
        network.processes["a"].wait_for(r"y pool 0/\d+ .* QBER (1[2-9]|[2-9]\d)\.\d\d%")
        # Keys a~y made before Eve came: a keeps them, but relays nothing over that fibre.
        network.fill("a", "y", 100)
        with network.client("x", "sae-x") as x, network.client("y", "sae-y") as y:
            for _ in range(5):  # every request succeeds, the first one at its second route
                sent = x.get_enc_keys("sae-y", number=2)
                assert [k.key for k in y.get_dec_keys("sae-x", [k.key_ID for k in sent])] == [
                    k.key for k in sent]
        a, b, x_stats = (_stats(network, n) for n in ("a", "b", "x"))
        assert a["relay"]["forwarded"] == 0 and b["relay"]["forwarded"] == 10  # type: ignore[index]
        assert x_stats["relay"]["failed"] >= 1  # type: ignore[index]
        assert a["links"]["y"]["free"] == 100  # type: ignore[index]
        status = subprocess.run(
            qsecret_cmd("kme", "status", "--url", network.url("a"), "--data",
                        str(network.data), "--sae", "sae-x"),
            capture_output=True, text=True, timeout=60)
        (alarm,) = [line for line in status.stdout.splitlines() if "link to y" in line]
        assert "ALARM" in alarm, status.stdout
    finally:
        stop_network(network)


def test_no_usable_path_is_a_503_that_says_so(chain: Network) -> None:
    with chain.client("x", "sae-x") as x:
        # x's own link is empty: x knows at once.
        with pytest.raises(KmeUnavailable, match="no usable path from x to y"):
            x.get_enc_keys("sae-y", number=1)
        # m~y is empty: x learns it from the failed relay, which hands nothing out ...
        chain.fill("x", "m", 30)
        with pytest.raises(KmeUnavailable, match="could not be relayed to y.*m~y"):
            x.get_enc_keys("sae-y", number=1)
        # ... and avoids that link for a while.
        with pytest.raises(KmeUnavailable, match="no usable path from x to y"):
            x.get_enc_keys("sae-y", number=1)
        with pytest.raises(KmeBadRequest, match="sae-nobody"):
            x.get_enc_keys("sae-nobody", number=1)


class FakeX:
    """The test plays node x towards m with x's KME certificate: it binds link keys of x~m
    at m as x would and sends relay frames it built itself."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.http = RawHttp(network.url("m"), network.pki.client_context(network.pki.kme("x")))

    def close(self) -> None:
        self.http.close()

    def link_keys(self, count: int) -> list[tuple[str, bytes]]:
        """Fresh x~m keys at m (not at the real x, which then never uses them), bound for
        a relay from x as x's allocator would bind them."""
        batch = [(str(uuid.uuid4()), os.urandom(32)) for _ in range(count)]
        with KeyPool(link_pool_path(self.network.data, "m", "x")) as pool:
            pool.add_keys(batch)
        binding = Binding(str(uuid.uuid4()), RELAY_MASTER, RELAY_SLAVE, "x",
                          tuple(BoundKey(k, 256, (k,)) for k, _ in batch))
        resp = self.http.post("/kme/v1/bindings", json=binding.to_json())
        assert resp.status_code == 200 and resp.json()["missing"] == [], resp.text
        return batch

    def frame(self, key: bytes, route: tuple[str, ...] = ROUTE, hop: int = 0,
              slave: str = "sae-y") -> tuple[dict[str, object], tuple[str, bytes]]:
        (pad_id, pad), (mac_id, mac), confirm = self.link_keys(3)
        header = key_relay.RelayHeader(str(uuid.uuid4()), str(uuid.uuid4()), "sae-x", slave,
                                       route, hop, pad_id, mac_id)
        sealed = key_relay.seal_hop(header, key, pad, mac)
        return {"frames": [sealed.to_json()], "confirm_mac_IDs": [confirm[0]]}, confirm


def test_a_relayed_frame_that_is_tampered_replayed_or_misrouted_is_refused(
        chain: Network) -> None:
    chain.fill("m", "y", 30)
    fake = FakeX(chain)
    try:
        key = os.urandom(32)
        body, _ = fake.frame(key)
        flipped = dict(body["frames"][0])  # type: ignore[index]
        ciphertext = bytearray(bytes.fromhex(flipped["ciphertext"]))
        ciphertext[5] ^= 0x10
        flipped["ciphertext"] = ciphertext.hex()
        resp = fake.http.post("/kme/v1/relay", json={**body, "frames": [flipped]})
        assert resp.status_code == 400 and resp.json()["refused"] == "bad_mac", resp.text

        # The same frame intact: m forwards it, y keeps it and confirms back to "x".
        key = os.urandom(32)
        body, (confirm_id, confirm_key) = fake.frame(key)
        resp = fake.http.post("/kme/v1/relay", json=body)
        assert resp.status_code == 200, resp.text
        confirm = key_relay.Confirm.from_json(resp.json()["confirms"][0])
        key_relay.open_confirm(confirm, confirm_key, "x")
        assert confirm.mac_id == confirm_id
        key_id = body["frames"][0]["key_ID"]  # type: ignore[index]
        with chain.client("y", "sae-y") as y:
            assert y.get_dec_keys("sae-x", [key_id])[0].key == key
        # Sent again: a replay.
        resp = fake.http.post("/kme/v1/relay", json=body)
        assert resp.status_code == 400 and resp.json()["refused"] == "replayed", resp.text
        # For a node that is not next on the route, or naming link keys m never had.
        misrouted, _ = fake.frame(os.urandom(32), route=("x", "y", "m"))
        resp = fake.http.post("/kme/v1/relay", json=misrouted)
        assert resp.status_code == 400 and resp.json()["refused"] == "not_on_route", resp.text
        unknown, _ = fake.frame(os.urandom(32))
        unknown["frames"][0]["pad_ID"] = str(uuid.uuid4())  # type: ignore[index]
        resp = fake.http.post("/kme/v1/relay", json=unknown)
        assert resp.status_code == 400 and resp.json()["refused"] == "unknown_key", resp.text
        # An SAE certificate may not call the relay, nor may a KME that is no neighbour.
        with RawHttp(chain.url("y"), chain.pki.client_context(chain.pki.kme("x"))) as far:
            assert far.post("/kme/v1/relay", json=body).status_code == 401
    finally:
        fake.close()
    refused = _stats(chain, "m")["relay"]["refused"]  # type: ignore[index]
    assert {k: v for k, v in refused.items() if v} == {
        "bad_mac": 1, "replayed": 1, "not_on_route": 1, "unknown_key": 1}
    chain.stop("m")
    log = "\n".join(chain.processes["m"].lines)
    assert re.search(r"refused \(bad_mac\)", log)
    assert key.hex() not in log and ciphertext.hex() not in log


@pytest.mark.slow
def test_kill_9_of_the_middle_node_leaves_no_key_at_one_end_only(chain: Network) -> None:
    chain.fill("x", "m", 3000)
    chain.fill("m", "y", 3000)
    received: dict[str, bytes] = {}
    duplicates: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def relay_loop() -> None:
        with chain.client("x", "sae-x") as x:
            while not stop.is_set():
                try:
                    keys = x.get_enc_keys("sae-y", number=2)
                except KmeUnavailable:
                    continue  # m is down: nothing handed out, try again
                with lock:
                    for k in keys:
                        if k.key_ID in received:
                            duplicates.append(k.key_ID)
                        received[k.key_ID] = k.key

    threads = [threading.Thread(target=relay_loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(received) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        chain.stop("m", signal.SIGKILL)  # mid-flight: relays are passing through m
        with lock:
            before_kill = len(received)
        chain.start("m")
        deadline = time.monotonic() + 60
        while len(received) < before_kill + 20 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert before_kill >= 40 and len(received) >= before_kill + 20, "relaying did not resume"
    assert not duplicates
    chain.stop("y")  # its own store, read directly: every key y holds or handed out
    store = LocalKeyStore(chain.data / "y" / "own-keys.sqlite", redelivery_grace_s=600,
                          ttl_s=3600)
    try:
        held = store.key_ids()
    finally:
        store.close()
    # Every key the master got is y's, with the same bytes; y holds at most the keys of the
    # requests cut short (three clients, two keys each), whose key_IDs nobody learnt.
    assert all(held.get(key_id) == key for key_id, key in received.items())
    assert len(set(held) - set(received)) <= 6
