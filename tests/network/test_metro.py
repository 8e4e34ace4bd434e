"""The built-in metro network as eight real node processes (on free ports, links filled by
the test): ETSI keys for SAEs four and three hops apart, both ways, and on one node."""

from __future__ import annotations

from pathlib import Path

import pytest

from keysource.network.topology import builtin

from .conftest import start_builtin, stop_network

pytestmark = pytest.mark.slow


def test_keys_for_every_kind_of_pair_on_the_metro_network(tmp_path: Path) -> None:
    metro = builtin("metro")
    network = start_builtin(tmp_path, "metro", "--link", "none")
    try:
        for link in metro.links:
            network.fill(link.a, link.b, 200)
        pairs = [("sae-alice", "sae-bob"), ("sae-bob", "sae-alice"),  # hf-5 .. hf-7: 4 hops
                 ("sae-carol", "sae-alice"),  # hf-6 -> hf-2 -> hf-1 -> hf-5: 3 hops
                 ("sae-alice", "sae-dave")]  # both at hf-5
        for master, slave in pairs:
            at_master, at_slave = metro.node_of_sae(master), metro.node_of_sae(slave)
            assert at_master and at_slave
            with network.client(at_master, master) as m, network.client(at_slave, slave) as s:
                sent = m.get_enc_keys(slave, number=4)
                got = s.get_dec_keys(master, [k.key_ID for k in sent])
                assert [k.key for k in got] == [k.key for k in sent], (master, slave)
        forwarded = {n.name: network.stats(n.name)["relay"]["forwarded"] for n in metro.nodes}
        # alice <-> bob crossed hf-1 and hf-3 and one of hf-2 / hf-4; carol's keys hf-2, hf-1.
        assert forwarded["hf-1"] == 12 and forwarded["hf-3"] == 8
        assert forwarded["hf-2"] + forwarded["hf-4"] == 12 and forwarded["hf-2"] >= 4
        assert all(forwarded[n] == 0 for n in ("hf-5", "hf-6", "hf-7", "hf-8"))
        # The nodes on the way told alice's node how full their links are now, so its next
        # routes weigh the real pools: hf-3~hf-7 gave up keys, the ring's unused side none.
        heard = network.stats("hf-5")["heard_links"]
        assert heard["hf-3~hf-7"]["keys"] < 200
        assert any(state["keys"] == 200 for state in heard.values())
        assert "hf-1~hf-5" not in heard  # its own link: it knows that one itself
    finally:
        stop_network(network)
