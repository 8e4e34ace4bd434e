"""Real network nodes: ``qsecret kme serve --topology FILE --node NAME`` processes on loopback.

A chain x - m - y (x is the allocator of x~m, m of m~y): sae-x and sae-x2 at x, sae-m at
the trusted node m, sae-y at y. Ports are free ports written into the topology file.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from keysource.kme.client import SaeClient
from keysource.kme.network_runtime import link_pool_path
from keysource.kme.pki import Pki
from keysource.kme.pool import KeyPool
from tests.e2e.stack import Stack
from tests.kme.conftest import KmeProcess, RawHttp, qsecret_cmd, random_batch, start_kme
from tests.kme.test_link import free_port

NODES = {"x": ["sae-x", "sae-x2"], "m": ["sae-m"], "y": ["sae-y"]}
LINKS = [("x", "m"), ("m", "y")]


def write_topology(path: Path, nodes: dict[str, list[str]],
                   links: Sequence[tuple[str, str] | tuple[str, str, float]]) -> dict[str, int]:
    """A topology file on free loopback ports; the nodes' HTTPS ports by name. A link may
    name the fraction of pulses an eavesdropper intercepts, third."""
    ports = {name: free_port() for name in nodes}
    lines = ['name = "test-chain"']
    for name, saes in nodes.items():
        listed = ", ".join(f'"{s}"' for s in saes)
        lines += ["[[node]]", f'name = "{name}"', f"port = {ports[name]}", f"saes = [{listed}]"]
    for a, b, *eve in links:
        lines += ["[[link]]", f'a = "{a}"', f'b = "{b}"', "km = 5.0", f"port = {free_port()}",
                  f"eve = {eve[0] if eve else 0.0}"]
    path.write_text("\n".join(lines) + "\n")
    return ports


def write_builtin(path: Path, name: str) -> dict[str, int]:
    """A built-in topology (its nodes, links and SAEs) written to a file on free ports."""
    from keysource.network.topology import builtin

    topology = builtin(name)
    ports = {node.name: free_port() for node in topology.nodes}
    lines = [f'name = "{topology.name}"']
    for node in topology.nodes:
        listed = ", ".join(f'"{s}"' for s in node.saes)
        lines += ["[[node]]", f'name = "{node.name}"', f'role = "{node.role}"',
                  f"port = {ports[node.name]}", f"saes = [{listed}]"]
    for link in topology.links:
        lines += ["[[link]]", f'a = "{link.a}"', f'b = "{link.b}"', f"km = {link.km}",
                  f"port = {free_port()}", f'medium = "{link.medium}"']
        if link.loss_db is not None:
            lines.append(f"loss_db = {link.loss_db}")
        if link.passes is not None:
            lines.append(f"passes = {{ period_s = {link.passes.period_s}, duration_s = "
                         f"{link.passes.duration_s}, offset_s = {link.passes.offset_s} }}")
    path.write_text("\n".join(lines) + "\n")
    return ports


@dataclass
class Network:
    data: Path
    topology: Path
    ports: dict[str, int]
    extra: Sequence[str] = ()
    processes: dict[str, KmeProcess] = field(default_factory=dict)

    @property
    def pki(self) -> Pki:
        return Pki(self.data / "pki")

    per_node: dict[str, Sequence[str]] = field(default_factory=dict)

    def start(self, name: str) -> KmeProcess:
        self.processes[name] = start_kme(
            ["serve", "--topology", str(self.topology), "--node", name, "--data",
             str(self.data), "--status-interval", "0", *self.extra,
             *self.per_node.get(name, ())], ready_count=1)
        return self.processes[name]

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        self.processes[name].stop(sig)

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.ports[name]}"

    def client(self, node: str, sae: str) -> SaeClient:
        paths = self.pki.sae(sae)
        return SaeClient(self.url(node), ca=self.pki.ca_cert, cert=paths.cert, key=paths.key)

    def stats(self, node: str) -> dict[str, Any]:
        """A node's figures (``/kme/v1/stats``: pools, relay counts; no key material)."""
        with RawHttp(self.url(node), self.pki.client_context(self.pki.kme(node))) as http:
            resp = http.get("/kme/v1/stats")
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()["pool"]
        return body

    def fill(self, a: str, b: str, count: int) -> list[tuple[str, bytes]]:
        """The same fresh keys into both pools of link a~b, as its QKD link would."""
        batch = random_batch(count)
        for here, there in ((a, b), (b, a)):
            with KeyPool(link_pool_path(self.data, here, there)) as pool:
                pool.add_keys(batch)
        return batch


def start_network(tmp: Path, *extra: str, nodes: dict[str, list[str]] = NODES,
                  links: Sequence[tuple[str, str] | tuple[str, str, float]] = LINKS,
                  per_node: dict[str, Sequence[str]] | None = None) -> Network:
    """The chain (or the network given), every node running (the PKI made first, so no two
    nodes race for it)."""
    tmp.mkdir(parents=True, exist_ok=True)
    topology = tmp / "network.toml"
    ports = write_topology(topology, nodes, links)
    return _start(tmp, topology, ports, nodes, extra, per_node)


def start_builtin(tmp: Path, name: str, *extra: str) -> Network:
    """A built-in topology on free ports, every node running."""
    from keysource.network.topology import builtin

    tmp.mkdir(parents=True, exist_ok=True)
    topology = tmp / f"{name}.toml"
    ports = write_builtin(topology, name)
    nodes = {node.name: list(node.saes) for node in builtin(name).nodes}
    return _start(tmp, topology, ports, nodes, extra, None)


def _start(tmp: Path, topology: Path, ports: dict[str, int], nodes: dict[str, list[str]],
           extra: Sequence[str], per_node: dict[str, Sequence[str]] | None) -> Network:
    args = ["kme", "pki", "init", "--dir", str(tmp / "pki")]
    args += [f"--kme={n}" for n in nodes] + [f"--sae={s}" for saes in nodes.values()
                                             for s in saes]
    subprocess.run(qsecret_cmd(*args), check=True, capture_output=True)
    network = Network(tmp, topology, ports, extra, per_node=per_node or {})
    try:
        for name in nodes:
            network.start(name)
    except BaseException:
        stop_network(network)
        raise
    return network


def users_on_two_nodes(root: Path, at: dict[str, str],
                       nodes: dict[str, list[str]]) -> tuple[Stack, Network]:
    """Nodes x and y joined by one link (their pools holding keys), a relay, and a profile
    for each user at their node (``at``: handle -> node), each not yet logged in."""
    network = start_network(root / "net", "--frame-bits", "65536", "--keys-ready", "200",
                            nodes=nodes, links=[("x", "y")])
    stack = Stack(root)
    try:
        for name in nodes:
            network.processes[name].wait_for(r"^keys ready", timeout_s=300)
        stack.start_relay()
        for handle, node in at.items():  # one at a time: the PKI issues each certificate
            stack.cli(handle, "init", "--handle", handle, "--sae-id", f"sae-{handle}",
                      "--kme", network.url(node), "--kme-pki", str(network.pki.root),
                      check=True)
    except BaseException:
        stack.stop()
        stop_network(network)
        raise
    return stack, network


def stop_network(network: Network) -> None:
    for process in network.processes.values():
        process.stop()


@contextlib.contextmanager
def logged_in_on_two_nodes(root: Path, at: dict[str, str],
                           nodes: dict[str, list[str]]) -> Iterator[Stack]:
    """:func:`users_on_two_nodes`, every user logged in once (prekeys on the relay; at once,
    as separate users would); relay and nodes stopped afterwards."""
    stack, network = users_on_two_nodes(root, at, nodes)
    try:
        with ThreadPoolExecutor(len(at)) as pool:
            for login in [pool.submit(stack.cli, handle, "recv", check=True) for handle in at]:
                login.result()
        yield stack
    finally:
        stack.stop()
        stop_network(network)


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Network]:
    """The chain without QKD links (--link none): tests fill the link pools themselves."""
    network = start_network(tmp_path, "--link", "none")
    try:
        yield network
    finally:
        stop_network(network)
