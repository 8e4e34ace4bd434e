"""Routes for relayed keys: the shortest usable path, weighted by pool level and link health.

A key for SAEs at nodes X and Y takes the path whose links all hold enough key to pad and
authenticate it (``keys_needed`` per hop), whose last QBER is under the threshold and that
raise no alarm; among those, the one with the least cost, a hop costing
``1 + POOL_WEIGHT / keys`` so that a nearly empty pool is avoided while a fuller detour of
similar length exists. Ties go to the path whose node names sort first, so both ends of a
decision and every test see the same route. Pure functions: the node's shell feeds them the
link states it hears about, and routes change as the links do.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass

from .key_relay import KEYS_PER_HOP
from .topology import Topology, TopologyError

POOL_WEIGHT = 16.0  # a hop over a pool of 16 keys costs as much as two hops over a full one


@dataclass(frozen=True)
class LinkState:
    """What a node knows of one link now."""

    keys: int  # keys the link's pools hold for relaying (both ends hold the same)
    qber: float | None = None  # the last block's QBER (None: no block yet)
    alarm: bool = False  # the link's recent blocks aborted (an eavesdropper, a fault)


def usable(state: LinkState | None, keys_needed: int, qber_threshold: float) -> bool:
    if state is None or state.alarm or state.keys < keys_needed:
        return False
    return state.qber is None or state.qber <= qber_threshold


def hop_cost(state: LinkState) -> float:
    return 1.0 + POOL_WEIGHT / max(1, state.keys)


def shortest_path(topology: Topology, states: Mapping[str, LinkState], source: str,
                  target: str, *, keys_needed: int = KEYS_PER_HOP,
                  qber_threshold: float = 0.11) -> list[str] | None:
    """Node names from ``source`` to ``target`` (``[source]`` when they are one node), or
    None when no usable path exists now. ``states`` is keyed by link name (``a~b``)."""
    topology.node(source)
    topology.node(target)  # TopologyError for an unknown node
    if source == target:
        return [source]
    best: dict[str, tuple[float, tuple[str, ...]]] = {source: (0.0, (source,))}
    heap: list[tuple[float, tuple[str, ...]]] = [(0.0, (source,))]
    while heap:
        cost, path = heapq.heappop(heap)
        node = path[-1]
        if best.get(node, (cost, path)) < (cost, path):
            continue  # a better way here was found after this one was queued
        if node == target:
            return list(path)
        for link in topology.links_of(node):
            state = states.get(link.name)
            if not usable(state, keys_needed, qber_threshold):
                continue
            nxt = link.other(node)
            if nxt in path:
                continue
            entry = (cost + hop_cost(state), (*path, nxt))  # type: ignore[arg-type]
            if nxt not in best or entry < best[nxt]:
                best[nxt] = entry
                heapq.heappush(heap, entry)
    return None


def describe(path: list[str], master: str | None = None, slave: str | None = None) -> str:
    """``alice@hf-1 → hf-3 → bob@hf-5 (2 hops)``: the path a key took, for people."""
    if not path:
        raise TopologyError("an empty path")
    first = f"{master}@{path[0]}" if master else path[0]
    last = f"{slave}@{path[-1]}" if slave else path[-1]
    hops = len(path) - 1
    if hops == 0:
        both = first if first == last else f"{first} and {last}"
        return f"{both} (same node)"
    return f"{' → '.join([first, *path[1:-1], last])} ({hops} hop{'s' if hops > 1 else ''})"


__all__ = ["KEYS_PER_HOP", "POOL_WEIGHT", "LinkState", "describe", "hop_cost",
           "shortest_path", "usable"]
