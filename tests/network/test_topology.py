"""Topologies: the built-in networks have the shapes they claim; every bad file says where."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from keysource.network.topology import (
    BUILTIN,
    Passes,
    TopologyError,
    builtin,
    from_dict,
    load,
)


def test_pair_is_todays_kme_pair() -> None:
    pair = builtin("pair")
    assert [n.name for n in pair.nodes] == ["kme-alice", "kme-bob"]
    assert [(link.name, link.km) for link in pair.links] == [("kme-alice~kme-bob", 25.0)]


def test_metro_is_a_ring_of_core_nodes_with_access_nodes() -> None:
    metro = builtin("metro")
    assert 6 <= len(metro.nodes) <= 10
    core = [n.name for n in metro.nodes if n.role == "core"]
    access = [n.name for n in metro.nodes if n.role == "access"]
    assert len(core) >= 3 and access
    for name in core:  # a ring: every core node has two core neighbours
        neighbours = [link.other(name) for link in metro.links_of(name)]
        assert sum(n in core for n in neighbours) == 2
    for name in access:  # hanging off one core node
        assert [link.other(name) in core for link in metro.links_of(name)] == [True]


def test_backbone_joins_two_cities_by_a_trusted_chain_and_a_satellite() -> None:
    backbone = builtin("backbone")
    trusted = {n.name for n in backbone.nodes if n.role == "trusted"}
    chain = [link for link in backbone.links if trusted & {link.a, link.b}]
    assert all(80 <= link.km <= 100 for link in chain)
    assert 900 <= sum(link.km for link in chain) <= 1200
    (satellite,) = [link for link in backbone.links if link.medium == "free-space"]
    assert 30 <= satellite.total_loss_db <= 40
    assert satellite.passes is not None and satellite.passes.duration_s <= 600
    # The emulated channel has the satellite's loss, whatever its length.
    assert satellite.link_params().transmittance == pytest.approx(10 ** -3.5)


def test_every_builtin_loads_by_name() -> None:
    for name in BUILTIN:
        assert load(name).name == name


def test_passes() -> None:
    passes = Passes(period_s=600, duration_s=180, offset_s=100)
    assert not passes.active(50) and passes.active(100) and passes.active(279)
    assert not passes.active(280) and passes.active(700)
    assert passes.next_start(300) == 700 and passes.next_start(150) == 150


def test_a_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(
        'name = "lab"\n'
        '[[node]]\nname = "x"\n[[node]]\nname = "y"\nrole = "trusted"\n[[node]]\nname = "z"\n'
        '[[link]]\na = "x"\nb = "y"\nkm = 10\neve = 0.5\n'
        '[[link]]\na = "z"\nb = "y"\nkm = 800\nmedium = "free-space"\nloss_db = 32\n'
        'passes = { period_s = 300, duration_s = 60 }\nparams = { detector_efficiency = 0.2 }\n')
    lab = load(path)
    assert lab.name == "lab" and lab.node("y").role == "trusted"
    link = lab.link("y", "x")
    assert link is not None and link.link_params().intercept_fraction == 0.5
    space = lab.link("y", "z")
    assert space is not None and space.link_params().detector_efficiency == 0.2
    assert math.isclose(space.link_params().transmittance, 10 ** -3.2)


@pytest.mark.parametrize(("change", "names"), [
    ({"extra": 1}, "unknown top-level key(s): extra"),
    ({"node": [{"name": "a"}]}, "needs at least two nodes"),
    ({"node": [{"name": "a b"}, {"name": "c"}]}, "node[0].name"),
    ({"node": [{"name": "a", "role": "king"}, {"name": "b"}]}, "node[0].role"),
    ({"node": [{"name": "a"}, {"name": "a"}]}, "listed twice"),
    ({"link": [{"a": "a", "b": "q", "km": 1}]}, "no node 'q'"),
    ({"link": [{"a": "a", "b": "a", "km": 1}]}, "two different nodes"),
    ({"link": [{"a": "a", "b": "b", "km": 0}]}, "link[0].km"),
    ({"link": [{"a": "a", "b": "b", "km": "far"}]}, "link[0].km"),
    ({"link": [{"a": "a", "b": "b", "km": 1, "eve": 2}]}, "link[0].eve"),
    ({"link": [{"a": "a", "b": "b", "km": 1, "loss_db": 3}]}, "link[0].loss_db"),
    ({"link": [{"a": "a", "b": "b", "km": 1, "medium": "free-space"}]}, "link[0].loss_db"),
    ({"link": [{"a": "a", "b": "b", "km": 1, "passes": {"period_s": 5, "duration_s": 1}}]},
     "link[0].passes"),
    ({"link": [{"a": "a", "b": "b", "km": 1, "params": {"warp": 9}}]}, "link[0].params.warp"),
    ({"link": [{"a": "a", "b": "b", "km": 1, "params": {"fibre_km": 9}}]},
     "link[0].params.fibre_km"),
    ({"link": [{"a": "a", "b": "b", "km": 1, "params": {"misalignment": 0.9}}]},
     "link[0].params: misalignment"),
    ({"link": [{"a": "a", "b": "b", "km": 1}, {"a": "b", "b": "a", "km": 2}]}, "listed twice"),
    ({"node": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
      "link": [{"a": "a", "b": "b", "km": 1}]}, "no link reaches c"),
])
def test_bad_topologies_name_the_place(change: dict, names: str) -> None:
    data = {"name": "t", "node": [{"name": "a"}, {"name": "b"}],
            "link": [{"a": "a", "b": "b", "km": 1}], **change}
    with pytest.raises(TopologyError) as refused:
        from_dict(data)
    assert names in str(refused.value)


def test_unreadable_files_say_what_is_built_in(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="built in: pair, metro, backbone"):
        load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(TopologyError, match="not valid TOML"):
        load(bad)
