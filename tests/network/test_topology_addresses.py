"""Where the nodes of a topology listen and which SAEs each serves: defaults every process
derives alike, and the clashes a file must not have."""

from __future__ import annotations

import pytest

from keysource.network.topology import (
    FIRST_LINK_PORT,
    FIRST_NODE_PORT,
    TopologyError,
    builtin,
    from_dict,
)


def test_builtin_ports_and_saes() -> None:
    pair = builtin("pair")  # the ports of 'qsecret kme pair' and its two SAEs
    assert [(n.name, n.port, n.saes) for n in pair.nodes] == [
        ("kme-alice", 8441, ("sae-alice",)), ("kme-bob", 8442, ("sae-bob",))]
    assert pair.links[0].port == 7441 and pair.node("kme-bob").url == "https://127.0.0.1:8442"
    metro = builtin("metro")
    assert metro.node_of_sae("sae-alice") == metro.node_of_sae("sae-dave") == "hf-5"
    assert len({metro.node_of_sae(s) for s in ("sae-alice", "sae-bob", "sae-carol")}) == 3
    assert metro.node_of_sae("sae-nobody") is None
    backbone = builtin("backbone")  # two cities numbered as one network: no port twice
    ports = [n.port for n in backbone.nodes] + [link.port for link in backbone.links]
    assert len(set(ports)) == len(ports)
    assert [n.port for n in backbone.nodes] == [FIRST_NODE_PORT + i
                                                for i in range(len(backbone.nodes))]
    assert backbone.links[-1].port == FIRST_LINK_PORT + len(backbone.links) - 1


def test_a_file_sets_hosts_ports_and_saes() -> None:
    net = from_dict({"node": [
        {"name": "a", "host": "192.168.1.20", "port": 9000, "saes": ["sae-1", "sae-2"]},
        {"name": "b", "host": "laptop-2.local"}],
        "link": [{"a": "a", "b": "b", "km": 3, "port": 9100}]})
    assert net.node("a").url == "https://192.168.1.20:9000"
    assert net.node("b").port == FIRST_NODE_PORT + 1 and net.links[0].port == 9100
    assert net.node_of_sae("sae-2") == "a"


@pytest.mark.parametrize(("nodes", "link_port", "names"), [
    ([{"name": "a", "port": 0.5}, {"name": "b"}], None, "node[0].port"),
    ([{"name": "a", "port": 70000}, {"name": "b"}], None, "node[0].port"),
    ([{"name": "a", "host": "a b"}, {"name": "b"}], None, "node[0].host"),
    ([{"name": "a", "saes": ["bad id"]}, {"name": "b"}], None, "node[0].saes"),
    ([{"name": "a", "saes": ["relay.sender"]}, {"name": "b"}], None, "reserved"),
    ([{"name": "a", "saes": ["s"]}, {"name": "b", "saes": ["s"]}], None, "served by both"),
    ([{"name": "a", "port": 9000}, {"name": "b", "port": 9000}], None, "port 9000"),
    ([{"name": "a", "port": 9000}, {"name": "b"}], 9000, "port 9000"),
])
def test_clashing_addresses_are_refused(nodes: list, link_port: int | None,
                                        names: str) -> None:
    link = {"a": "a", "b": "b", "km": 1, **({"port": link_port} if link_port else {})}
    with pytest.raises(TopologyError, match=names.replace(".", r"\.").replace("[", r"\[")):
        from_dict({"node": nodes, "link": [link]})


def test_pass_windows() -> None:
    from keysource.network.topology import Passes

    passes = Passes(period_s=600, duration_s=180, offset_s=100)
    assert passes.window(150) == (100, 280)  # under way
    assert passes.window(100) == (100, 280)
    assert passes.window(280) == (700, 880)  # over: the next one
    assert passes.window(50) == (100, 280)
