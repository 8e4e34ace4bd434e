"""The built-in backbone as real node processes (two cities, ~1,000 km of trusted fibre nodes
and a satellite link in passes): ETSI GS QKD 014 keys for alice in Hefei and bob in Beijing.

The links run with ``--link none`` and the test fills their pools, as their QKD links would:
the satellite's pool holds what its last pass made. While that lasts, keys for the far city
cross the satellite (7 hops); once it is spent (the satellite is out of its pass) they take
the trusted fibre chain (18 hops) at once; with the chain cut too, the master gets a 503 that
says to retry (the key waits for the next pass) and nothing is handed out.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from keysource.kme.client import KmeUnavailable
from keysource.network.topology import builtin

from .conftest import start_builtin, stop_network

pytestmark = pytest.mark.slow

SATELLITE = "gs-bj~gs-hf"  # a link's name: its two ends, sorted
SATELLITE_KEYS = 30  # what the last pass left: ten relayed keys at three link keys a hop
CHAIN = ["hf-3", *(f"tn-{i:02d}" for i in range(1, 12)), "bj-3"]


def test_keys_cross_the_backbone_by_satellite_then_by_the_trusted_chain(
        tmp_path: Path) -> None:
    backbone = builtin("backbone")
    assert backbone.node_of_sae("sae-alice") == "hf-5"
    assert backbone.node_of_sae("sae-bob") == "bj-5"
    network = start_builtin(tmp_path, "backbone", "--link", "none")
    try:
        for link in backbone.links:
            network.fill(link.a, link.b, SATELLITE_KEYS if link.name == SATELLITE else 300)
        paths: list[tuple[str, ...]] = []
        with network.client("hf-5", "sae-alice") as alice, \
                network.client("bj-5", "sae-bob") as bob:
            assert alice.get_status("sae-bob").stored_key_count > 0
            # Bounded: the satellite's pool gives out after at most ten keys.
            for _ in range(SATELLITE_KEYS // 3 + 4):
                (key,) = alice.get_enc_keys("sae-bob", number=1)
                (got,) = bob.get_dec_keys("sae-alice", [key.key_ID])
                assert got.key == key.key and got.path == key.path
                assert key.path[0] == "hf-5" and key.path[-1] == "bj-5"
                paths.append(key.path)
                if len([p for p in paths if "tn-01" in p]) == 3:
                    break
            by_satellite = [p for p in paths if "gs-hf" in p]
            assert by_satellite and paths[0] in by_satellite, paths
            assert all(p == ("hf-5", "hf-1", "hf-2", "gs-hf", "gs-bj", "bj-2", "bj-1", "bj-5")
                       for p in by_satellite), by_satellite
            first_chain = next(i for i, p in enumerate(paths) if "tn-01" in p)
            assert all("gs-hf" not in p for p in paths[first_chain:]), paths  # never back
            for path in paths[first_chain:]:
                assert len(path) - 1 == 18 and list(path[3:16]) == CHAIN, path
            # Every trusted node of the chain forwarded the chain's keys; the satellite's
            # ground stations only those of the pass.
            chain_keys = len(paths) - first_chain
            for node in CHAIN[1:-1]:
                assert network.stats(node)["relay"]["forwarded"] == chain_keys, node
            assert network.stats("gs-bj")["relay"]["forwarded"] == len(by_satellite)

            # The chain cut as well: the key must wait for the next pass.
            network.stop("tn-06", signal.SIGKILL)
            handed_out = network.stats("hf-5")["relay"]["relayed"]
            with pytest.raises(KmeUnavailable, match="retry"):
                alice.get_enc_keys("sae-bob", number=1)
            assert network.stats("hf-5")["relay"]["relayed"] == handed_out
    finally:
        stop_network(network)
