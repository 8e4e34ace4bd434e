"""A running network's live status, as ``qsecret network status`` and the TUI's network screen
show it: per link km, key rate, QBER, free keys and state (``ALARM`` over the threshold); per
node its SAEs and relay counts.

The source is the one ``network status`` reads: ``DATA/network.json`` (written by ``network
up``: which topology) and every node's ``GET /kme/v1/stats``, asked with a certificate of the
network's CA (a node's own, or an SAE's: the route takes any client certificate of the CA).
:func:`network_view` is pure, so the table and the screen agree on every state.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keysource.network.topology import Topology

STATE_FILE = "network.json"
QBER_ALARM = 0.11  # a link's last QBER over this raises the alarm (the nodes' threshold)
NETWORK_DIR_ENV = "QSECRET_NETWORK_DIR"


class NetworkUnknown(Exception):
    """No running network's state where it was looked for; the message says where and why."""


@dataclass(frozen=True)
class LinkRow:
    name: str  # a~b
    km: float
    medium: str
    rate: float | None  # keys per second (None: both ends down)
    qber: float | None  # the last block's (None: none yet, or both ends down)
    free: int | None  # free keys in the pool (None: both ends down)
    state: str  # up, down, node down, both nodes down, ALARM (QBER over 11%)

    @property
    def alarm(self) -> bool:
        return self.state.startswith("ALARM")


@dataclass(frozen=True)
class NodeRow:
    name: str
    role: str
    saes: tuple[str, ...]
    down: str | None  # why its stats could not be read; None: up
    relayed: int = 0
    forwarded: int = 0
    received: int = 0
    refused: int = 0


@dataclass(frozen=True)
class NetworkView:
    name: str
    links: tuple[LinkRow, ...]
    nodes: tuple[NodeRow, ...]
    at: float  # wall clock of the figures

    @property
    def nodes_up(self) -> int:
        return sum(node.down is None for node in self.nodes)


def network_view(topology: Topology, stats: dict[str, dict[str, Any] | str],
                 at: float | None = None) -> NetworkView:
    """The rows of the status table from every node's /kme/v1/stats (or why it is down)."""
    links = []
    for link in topology.links:
        row = None
        for here, there in ((link.a, link.b), (link.b, link.a)):
            node = stats.get(here)
            if isinstance(node, dict):
                row = (node["pool"]["links"].get(there), node["link"].get(there, {}))
                break
        if row is None or row[0] is None:
            links.append(LinkRow(link.name, link.km, link.medium, None, None, None,
                                 "both nodes down"))
            continue
        pool, snap = row
        qber = snap.get("last_qber")
        state = "up" if snap.get("connected") else "down"
        if not all(isinstance(stats.get(end), dict) for end in (link.a, link.b)):
            state = "node down"
        elif qber is not None and qber > QBER_ALARM:
            state = f"ALARM (QBER over {QBER_ALARM * 100:.0f}%)"
        links.append(LinkRow(link.name, link.km, link.medium,
                             float(snap.get("key_rate_per_s", 0.0)), qber, int(pool["free"]),
                             state))
    nodes = []
    for node in topology.nodes:
        info = stats.get(node.name)
        if not isinstance(info, dict):
            nodes.append(NodeRow(node.name, node.role, node.saes, str(info)))
            continue
        relay = info["pool"]["relay"]
        nodes.append(NodeRow(node.name, node.role, node.saes, None, int(relay["relayed"]),
                             int(relay["forwarded"]), int(relay["received"]),
                             sum(relay["refused"].values())))
    return NetworkView(topology.name, tuple(links), tuple(nodes),
                       time.time() if at is None else at)


def load_network(data: Path) -> Topology:
    """The topology of the network ``qsecret network up --data DATA`` runs."""
    from keysource.network.topology import TopologyError, load

    state_file = data / STATE_FILE
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        return load(state["topology"])
    except (OSError, ValueError, KeyError, TypeError, TopologyError) as exc:
        raise NetworkUnknown(f"no network in {data} ({exc}); start one with 'qsecret "
                             "network up'") from None


def node_stats(topology: Topology, data: Path,
               identity: tuple[Path, Path, Path] | None = None
               ) -> dict[str, dict[str, Any] | str]:
    """Every node's /kme/v1/stats, or why not. ``identity`` (CA, certificate, key) asks
    with that certificate; by default each node is asked with its own KME certificate."""
    from .pki import Pki
    from .runtime import fetch_stats

    pki = Pki(data / "pki")
    stats: dict[str, dict[str, Any] | str] = {}
    for node in topology.nodes:
        if identity is None:
            paths = pki.kme(node.name)
            ca, cert, key = pki.ca_cert, paths.cert, paths.key
        else:
            ca, cert, key = identity
        try:
            stats[node.name] = fetch_stats(node.url, ca=ca, cert=cert, key=key, sae_id=None)
        except Exception as exc:  # a node down is a row of the table, not a failure
            stats[node.name] = f"{type(exc).__name__}: {exc}"[:80]
    return stats


@dataclass(frozen=True)
class NetworkSource:
    """Where a messenger finds the network its KME belongs to, and with which certificate
    it asks the nodes (its own SAE certificate)."""

    data: Path
    identity: tuple[Path, Path, Path]

    @classmethod
    def for_profile(cls, kme_ca: str, sae_cert: str, sae_key: str) -> NetworkSource | None:
        """``$QSECRET_NETWORK_DIR``, else the directory whose ``pki`` holds the profile's
        KME CA (``qsecret init --kme-pki DATA/pki``, as the demo does); None without a CA."""
        if not (kme_ca and sae_cert and sae_key):
            return None
        data = os.environ.get(NETWORK_DIR_ENV) or str(Path(kme_ca).resolve().parent.parent)
        return cls(Path(data), (Path(kme_ca), Path(sae_cert), Path(sae_key)))

    def fetch(self) -> NetworkView:
        """The network's status now (blocking: a request per node); NetworkUnknown if no
        network runs from ``data``."""
        topology = load_network(self.data)
        return network_view(topology, node_stats(topology, self.data, self.identity))


__all__ = ["NETWORK_DIR_ENV", "QBER_ALARM", "STATE_FILE", "LinkRow", "NetworkSource",
           "NetworkUnknown", "NetworkView", "NodeRow", "load_network", "network_view",
           "node_stats"]
