"""Routing: shortest usable paths, weighted by pool level, avoiding attacked or empty links."""

from __future__ import annotations

import pytest

from keysource.network.routing import LinkState, describe, shortest_path
from keysource.network.topology import TopologyError, builtin

METRO = builtin("metro")  # ring hf-1 .. hf-4; hf-5 on hf-1, hf-6 on hf-2, hf-7 on hf-3, ...
FULL = LinkState(keys=1000, qber=0.02)


def states() -> dict[str, LinkState]:
    return {link.name: FULL for link in METRO.links}


def link(a: str, b: str) -> str:
    found = METRO.link(a, b)
    assert found is not None
    return found.name


def test_same_node_and_neighbours() -> None:
    all_full = states()
    assert shortest_path(METRO, all_full, "hf-1", "hf-1") == ["hf-1"]
    assert shortest_path(METRO, all_full, "hf-1", "hf-2") == ["hf-1", "hf-2"]


def test_access_to_access_across_the_ring() -> None:
    path = shortest_path(METRO, states(), "hf-5", "hf-7")
    assert path is not None and path[0] == "hf-5" and path[-1] == "hf-7"
    assert len(path) == 5  # hf-5, hf-1, (hf-2 or hf-4), hf-3, hf-7


def test_an_attacked_link_is_avoided_the_other_way_round_the_ring() -> None:
    s = states()
    s[link("hf-1", "hf-2")] = LinkState(keys=1000, qber=0.20)
    assert shortest_path(METRO, s, "hf-1", "hf-2") == ["hf-1", "hf-4", "hf-3", "hf-2"]
    s[link("hf-1", "hf-2")] = LinkState(keys=1000, qber=0.02, alarm=True)
    assert shortest_path(METRO, s, "hf-1", "hf-2") == ["hf-1", "hf-4", "hf-3", "hf-2"]


def test_an_empty_pool_is_avoided_and_a_low_one_weighs_more() -> None:
    s = states()
    s[link("hf-1", "hf-2")] = LinkState(keys=1)
    assert shortest_path(METRO, s, "hf-1", "hf-2") == ["hf-1", "hf-4", "hf-3", "hf-2"]
    # 4 keys: the direct hop costs 1 + 16/4 = 5, the detour 3 x 1.016: the detour wins.
    s[link("hf-1", "hf-2")] = LinkState(keys=4)
    assert shortest_path(METRO, s, "hf-1", "hf-2") == ["hf-1", "hf-4", "hf-3", "hf-2"]
    s[link("hf-1", "hf-2")] = LinkState(keys=64)
    assert shortest_path(METRO, s, "hf-1", "hf-2") == ["hf-1", "hf-2"]


def test_no_path_when_the_only_link_is_down() -> None:
    s = states()
    s[link("hf-1", "hf-5")] = LinkState(keys=1000, alarm=True)
    assert shortest_path(METRO, s, "hf-5", "hf-3") is None
    assert shortest_path(METRO, {}, "hf-1", "hf-2") is None  # nothing known: no route


def test_unknown_nodes_are_refused() -> None:
    with pytest.raises(TopologyError):
        shortest_path(METRO, states(), "hf-1", "nowhere")


def test_ties_are_broken_the_same_way_every_time() -> None:
    s = {name: LinkState(keys=1000) for name in states()}
    first = shortest_path(METRO, s, "hf-1", "hf-3")
    assert first == shortest_path(METRO, dict(reversed(list(s.items()))), "hf-1", "hf-3")
    assert first == ["hf-1", "hf-2", "hf-3"]  # equal cost both ways: names decide


def test_the_backbone_routes_over_the_chain_or_the_satellite() -> None:
    backbone = builtin("backbone")
    full = {link.name: LinkState(keys=1000) for link in backbone.links}
    path = shortest_path(backbone, full, "hf-5", "bj-5")
    assert path is not None and "gs-hf" in path  # the satellite is fewer hops
    empty_sky = dict(full, **{"gs-bj~gs-hf": LinkState(keys=0)})
    chain = shortest_path(backbone, empty_sky, "hf-5", "bj-5")
    assert chain is not None and sum(n.startswith("tn-") for n in chain) == 11


def test_describe() -> None:
    assert describe(["hf-1", "hf-3", "hf-5"], "alice", "bob") == \
        "alice@hf-1 → hf-3 → bob@hf-5 (2 hops)"
    assert describe(["hf-1"], "alice", "dave") == "alice@hf-1 and dave@hf-1 (same node)"
    assert describe(["a", "b"]) == "a → b (1 hop)"
