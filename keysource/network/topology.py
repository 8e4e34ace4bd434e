"""QKD network topologies: nodes (one KME each) and the QKD links between them.

A topology is a TOML file or a built-in name::

    name = "my-net"
    [[node]]
    name = "hf-1"            # letters, digits, '-', '_' and '.' (it names the KME)
    role = "core"            # core | access | trusted | ground (a satellite ground station)
    host = "127.0.0.1"       # where its KME listens (HTTPS API, and the links it listens for)
    port = 8441              # its HTTPS port (default 8441 + the node's index)
    saes = ["sae-alice"]     # the SAEs this KME serves (any number)
    [[link]]
    a = "hf-1"
    b = "hf-2"
    km = 12.5                # fibre length (or slant range of a free-space link)
    medium = "fibre"         # fibre | free-space
    loss_db = 35.0           # free-space only: total channel loss in dB
    eve = 0.0                # fraction of pulses an eavesdropper intercepts (0 = none)
    passes = { period_s = 600.0, duration_s = 180.0, offset_s = 0.0 }  # free-space: key only
                                                                       # during passes
    params = { detector_efficiency = 0.2 }   # any other LinkParams field
    port = 7441              # TCP port the link's ``b`` end listens on (default 7441 + index);
                             # the ``a`` end connects to it and allocates the link's keys

Built in: ``pair`` (two nodes, one 25 km link: the KME pair), ``metro`` (a Hefei-like metro
network: a ring of four core nodes with four access nodes hanging off them), ``backbone``
(two small metro networks about 1,000 km apart, joined by a chain of trusted nodes in
80-100 km fibre hops and by a satellite that gives key only during its passes).
Every problem in a file is reported with the key that holds it.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from keysource.kme.sae_id import RESERVED_SAE_PREFIX, SAE_ID_RULE, sae_id_problem
from keysource.qkd.params import LinkParams

ROLES = ("core", "access", "trusted", "ground")
MEDIA = ("fibre", "free-space")
BUILTIN = ("pair", "metro", "backbone")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")

# LinkParams fields a topology may not set per link: the topology says them itself, or
# they belong to a run, not to a fibre.
_RESERVED_PARAMS = {"fibre_km", "loss_db_per_km", "intercept_fraction", "seed"}


class TopologyError(ValueError):
    """A topology that cannot be used; the message names the place (``link[3].km``)."""


DEFAULT_HOST = "127.0.0.1"
FIRST_NODE_PORT = 8441  # node i's HTTPS port unless given: FIRST_NODE_PORT + i
FIRST_LINK_PORT = 7441  # link j's TCP port unless given: FIRST_LINK_PORT + j


@dataclass(frozen=True)
class Node:
    name: str
    role: str = "core"
    host: str = DEFAULT_HOST
    port: int = 0  # 0: FIRST_NODE_PORT + the node's index (filled in by Topology)
    saes: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


@dataclass(frozen=True)
class Passes:
    """When a free-space link sees its satellite: ``duration_s`` out of every ``period_s``."""

    period_s: float
    duration_s: float
    offset_s: float = 0.0

    def active(self, t: float) -> bool:
        return (t - self.offset_s) % self.period_s < self.duration_s

    def window(self, t: float) -> tuple[float, float]:
        """(start, end) of the pass under way at ``t``, or of the next one."""
        start = self.next_start(t)
        if start == t:
            start = t - (t - self.offset_s) % self.period_s
        return start, start + self.duration_s

    def next_start(self, t: float) -> float:
        """The start of the next pass at or after ``t`` (``t`` itself during a pass)."""
        if self.active(t):
            return t
        elapsed = (t - self.offset_s) % self.period_s
        return t + self.period_s - elapsed


@dataclass(frozen=True)
class Link:
    a: str
    b: str
    km: float
    medium: str = "fibre"
    loss_db: float | None = None  # free-space: the whole channel's loss
    eve: float = 0.0
    passes: Passes | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    port: int = 0  # 0: FIRST_LINK_PORT + the link's index (filled in by Topology)

    @property
    def name(self) -> str:
        """``a~b`` with the names in order: the same link whichever end names it."""
        return "~".join(sorted((self.a, self.b)))

    def other(self, node: str) -> str:
        return self.b if node == self.a else self.a

    @property
    def total_loss_db(self) -> float:
        if self.loss_db is not None:
            return self.loss_db
        return self.km * float(self.params.get("loss_db_per_km", LinkParams.loss_db_per_km))

    def link_params(self, seed: int | None = None) -> LinkParams:
        """The emulated link's parameters (a free-space link: its loss spread over its km)."""
        extra = {k: v for k, v in self.params.items() if k != "loss_db_per_km"}
        per_km = self.total_loss_db / self.km if self.km else 0.0
        return LinkParams(fibre_km=self.km, loss_db_per_km=per_km,
                          intercept_fraction=self.eve, seed=seed, **extra)


@dataclass(frozen=True)
class Topology:
    name: str
    nodes: tuple[Node, ...]
    links: tuple[Link, ...]

    def __post_init__(self) -> None:
        _check_graph(self)
        # Default ports: by position, so every process reading one file agrees on them.
        object.__setattr__(self, "nodes", tuple(
            node if node.port else replace(node, port=FIRST_NODE_PORT + i)
            for i, node in enumerate(self.nodes)))
        object.__setattr__(self, "links", tuple(
            link if link.port else replace(link, port=FIRST_LINK_PORT + i)
            for i, link in enumerate(self.links)))
        _check_addresses(self)

    def node_of_sae(self, sae_id: str) -> str | None:
        """The node whose KME serves ``sae_id``, or None."""
        return next((node.name for node in self.nodes if sae_id in node.saes), None)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise TopologyError(f"no node {name!r} in topology {self.name!r}")

    def links_of(self, node: str) -> Iterator[Link]:
        return (link for link in self.links if node in (link.a, link.b))

    def link(self, a: str, b: str) -> Link | None:
        wanted = "~".join(sorted((a, b)))
        return next((link for link in self.links if link.name == wanted), None)

    @property
    def fibre_km(self) -> float:
        return sum(link.km for link in self.links if link.medium == "fibre")


# ---------------------------------------------------------------- loading


def load(spec: str | Path) -> Topology:
    """A built-in topology by name, or a TOML file by path."""
    if isinstance(spec, str) and spec in BUILTIN:
        return builtin(spec)
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(f"cannot read topology {str(spec)!r}: {exc.strerror or exc} "
                            f"(built in: {', '.join(BUILTIN)})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(data, default_name=path.stem)


def from_dict(data: Mapping[str, Any], default_name: str = "network") -> Topology:
    """A topology from parsed TOML; TopologyError names the first bad key."""
    unknown = set(data) - {"name", "node", "link"}
    if unknown:
        raise TopologyError(f"unknown top-level key(s): {', '.join(sorted(unknown))}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise TopologyError("name: must be a non-empty string")
    raw_nodes = _table_list(data, "node")
    raw_links = _table_list(data, "link")
    nodes = tuple(_node(raw, f"node[{i}]") for i, raw in enumerate(raw_nodes))
    links = tuple(_link(raw, f"link[{i}]") for i, raw in enumerate(raw_links))
    return Topology(name, nodes, links)


def _table_list(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise TopologyError(f"{key}: must be an array of tables ([[{key}]])")
    return value


def _node(raw: Mapping[str, Any], where: str) -> Node:
    _only(raw, {"name", "role", "host", "port", "saes"}, where)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TopologyError(f"{where}.name: {name!r} is not a node name (letters, digits, "
                            "'.', '_', '-'; at most 63)")
    role = raw.get("role", "core")
    if role not in ROLES:
        raise TopologyError(f"{where}.role: {role!r} is not one of {', '.join(ROLES)}")
    host = raw.get("host", DEFAULT_HOST)
    if not isinstance(host, str) or not _HOST.fullmatch(host):
        raise TopologyError(f"{where}.host: {host!r} is not a host name or IP address")
    saes = raw.get("saes", [])
    if not isinstance(saes, list) or not all(
            isinstance(s, str) and sae_id_problem(s) is None for s in saes):
        raise TopologyError(f"{where}.saes: must be a list of SAE_IDs ({SAE_ID_RULE})")
    if any(s.startswith(RESERVED_SAE_PREFIX) for s in saes):
        raise TopologyError(f"{where}.saes: SAE_IDs starting {RESERVED_SAE_PREFIX!r} are "
                            "reserved for the KMEs' own key relay")
    return Node(name, role, host, _port(raw, where), tuple(saes))


def _port(raw: Mapping[str, Any], where: str) -> int:
    port = raw.get("port", 0)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536 and port:
        raise TopologyError(f"{where}.port: must be a TCP port (1-65535)")
    return int(port)


def _link(raw: Mapping[str, Any], where: str) -> Link:
    _only(raw, {"a", "b", "km", "medium", "loss_db", "eve", "passes", "params", "port"},
          where)
    ends = []
    for end in ("a", "b"):
        value = raw.get(end)
        if not isinstance(value, str):
            raise TopologyError(f"{where}.{end}: must name a node")
        ends.append(value)
    km = _number(raw, "km", where)
    if km is None or km <= 0:
        raise TopologyError(f"{where}.km: must be a number > 0")
    medium = raw.get("medium", "fibre")
    if medium not in MEDIA:
        raise TopologyError(f"{where}.medium: {medium!r} is not one of {', '.join(MEDIA)}")
    loss_db = _number(raw, "loss_db", where)
    if medium == "free-space":
        if loss_db is None or not 0 < loss_db < 80:
            raise TopologyError(f"{where}.loss_db: a free-space link needs its loss in dB "
                                "(0 < loss_db < 80; a satellite downlink is 30-40)")
    elif loss_db is not None:
        raise TopologyError(f"{where}.loss_db: only for free-space links (fibre loss is "
                            "km x loss_db_per_km)")
    eve = _number(raw, "eve", where) or 0.0
    if not 0 <= eve <= 1:
        raise TopologyError(f"{where}.eve: must be in [0, 1]")
    passes = _passes(raw.get("passes"), f"{where}.passes")
    if passes is not None and medium != "free-space":
        raise TopologyError(f"{where}.passes: only free-space links have passes")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise TopologyError(f"{where}.params: must be a table of LinkParams fields")
    known = {f.name for f in fields(LinkParams)} - _RESERVED_PARAMS | {"loss_db_per_km"}
    for key in params:
        if key not in known:
            raise TopologyError(f"{where}.params.{key}: not a link parameter "
                                f"(known: {', '.join(sorted(known))})")
    link = Link(ends[0], ends[1], float(km), medium, loss_db, float(eve), passes, dict(params),
                _port(raw, where))
    try:
        link.link_params()
    except (TypeError, ValueError) as exc:
        raise TopologyError(f"{where}.params: {exc}") from None
    return link


def _passes(raw: object, where: str) -> Passes | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise TopologyError(f"{where}: must be a table (period_s, duration_s, offset_s)")
    _only(raw, {"period_s", "duration_s", "offset_s"}, where)
    period, duration = _number(raw, "period_s", where), _number(raw, "duration_s", where)
    offset = _number(raw, "offset_s", where) or 0.0
    if period is None or duration is None or not 0 < duration < period:
        raise TopologyError(f"{where}: need 0 < duration_s < period_s")
    return Passes(period, duration, offset)


def _number(raw: Mapping[str, Any], key: str, where: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TopologyError(f"{where}.{key}: must be a number")
    return float(value)


def _only(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(raw) - allowed
    if unknown:
        raise TopologyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                            f"(allowed: {', '.join(sorted(allowed))})")


def _check_graph(topology: Topology) -> None:
    names = [node.name for node in topology.nodes]
    if len(names) < 2:
        raise TopologyError(f"topology {topology.name!r}: needs at least two nodes")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise TopologyError(f"node {name!r} is listed twice")
        seen.add(name)
    links: set[str] = set()
    for i, link in enumerate(topology.links):
        for end in (link.a, link.b):
            if end not in seen:
                raise TopologyError(f"link[{i}] ({link.a} - {link.b}): no node {end!r}")
        if link.a == link.b:
            raise TopologyError(f"link[{i}]: a link joins two different nodes ({link.a!r})")
        if link.name in links:
            raise TopologyError(f"link[{i}]: {link.a} - {link.b} is listed twice")
        links.add(link.name)
    # Every node must be reachable: a node no link reaches could never get a key.
    reached, todo = {names[0]}, [names[0]]
    while todo:
        node = todo.pop()
        for link in topology.links_of(node):
            other = link.other(node)
            if other not in reached:
                reached.add(other)
                todo.append(other)
    cut_off = [name for name in names if name not in reached]
    if cut_off:
        raise TopologyError(f"topology {topology.name!r}: no link reaches "
                            f"{', '.join(cut_off)}")


def _check_addresses(topology: Topology) -> None:
    """Two nodes on one host cannot share a port, nor can an SAE be served by two KMEs."""
    used: dict[tuple[str, int], str] = {}
    for node in topology.nodes:
        where = f"node {node.name!r}"
        if (node.host, node.port) in used:
            raise TopologyError(f"{where}: port {node.port} on {node.host} is taken by "
                                f"{used[(node.host, node.port)]}")
        used[(node.host, node.port)] = where
    for link in topology.links:
        host = topology.node(link.b).host
        where = f"link {link.a} - {link.b}"
        if (host, link.port) in used:
            raise TopologyError(f"{where}: port {link.port} on {host} is taken by "
                                f"{used[(host, link.port)]}")
        used[(host, link.port)] = where
    served: dict[str, str] = {}
    for node in topology.nodes:
        for sae in node.saes:
            if sae in served:
                raise TopologyError(f"SAE {sae!r} is served by both {served[sae]} and "
                                    f"{node.name}: an SAE belongs to one KME")
            served[sae] = node.name


# ---------------------------------------------------------------- built in


def builtin(name: str) -> Topology:
    """One of BUILTIN."""
    if name == "pair":
        return Topology("pair", (Node("kme-alice", saes=("sae-alice",)),
                                 Node("kme-bob", saes=("sae-bob",))),
                        (Link("kme-alice", "kme-bob", 25.0),))
    if name == "metro":
        return _with_saes(_metro("hf", "metro"), {"hf-5": ("sae-alice", "sae-dave"),
                                                  "hf-6": ("sae-carol",),
                                                  "hf-7": ("sae-bob",)})
    if name == "backbone":
        return _with_saes(_backbone(), {"hf-5": ("sae-alice",), "bj-5": ("sae-bob",)})
    raise TopologyError(f"no built-in topology {name!r} (built in: {', '.join(BUILTIN)})")


def _with_saes(topology: Topology, saes: Mapping[str, tuple[str, ...]]) -> Topology:
    nodes = tuple(replace(node, saes=saes.get(node.name, ())) for node in topology.nodes)
    return Topology(topology.name, nodes, topology.links)


def _metro(prefix: str, name: str, access: tuple[int, ...] = (1, 2, 3, 4)
           ) -> Topology:
    """A ring of four core nodes (12-18 km apart) with an access node (5-9 km) on each of
    ``access``: the shape of a metropolitan QKD network such as Hefei's, scaled down."""
    core = [Node(f"{prefix}-{i}", "core") for i in range(1, 5)]
    ring_km = (12.0, 15.0, 18.0, 14.0)
    links = [Link(core[i].name, core[(i + 1) % 4].name, km) for i, km in enumerate(ring_km)]
    nodes = list(core)
    for n, i in enumerate(access):
        node = Node(f"{prefix}-{4 + n + 1}", "access")
        nodes.append(node)
        links.append(Link(core[i - 1].name, node.name, (5.0, 7.0, 9.0, 6.0)[n % 4]))
    return Topology(name, tuple(nodes), tuple(links))


def _backbone() -> Topology:
    """Two metro networks about 1,000 km apart (hf: Hefei, bj: Beijing), joined by eleven
    trusted nodes in 80-100 km fibre hops and by a satellite (two ground stations, 35 dB,
    passes of 4 minutes every 20: key for the far city waits for a pass or takes the
    fibre chain)."""
    east, west = _metro("hf", "hf", (1,)), _metro("bj", "bj", (1,))
    # The two cities' ports were numbered each from the start: number them again as one.
    nodes = [replace(node, port=0) for node in (*east.nodes, *west.nodes)]
    links = [replace(link, port=0) for link in (*east.links, *west.links)]
    hops = (90.0, 85.0, 95.0, 80.0, 100.0, 88.0, 92.0, 84.0, 96.0, 86.0, 90.0, 94.0)
    chain = [f"tn-{i:02d}" for i in range(1, len(hops))]
    nodes += [Node(name, "trusted") for name in chain]
    stops = ["hf-3", *chain, "bj-3"]
    links += [Link(a, b, km) for (a, b), km in zip(pairwise(stops), hops, strict=True)]
    nodes += [Node("gs-hf", "ground"), Node("gs-bj", "ground")]
    links += [Link("hf-2", "gs-hf", 20.0), Link("bj-2", "gs-bj", 20.0),
              Link("gs-hf", "gs-bj", 1200.0, "free-space", loss_db=35.0,
                   passes=Passes(1200.0, 240.0))]
    return Topology("backbone", tuple(nodes), tuple(links))


__all__ = ["BUILTIN", "RESERVED_SAE_PREFIX", "Link", "Node", "Passes", "Topology",
           "TopologyError", "builtin", "from_dict", "load"]
