"""One node of a QKD network: one KME, one link pool per adjacent link, key relay between KMEs.

A node's KME serves its SAEs (any number: the topology's ``saes`` of this node that hold a
certificate of the PKI) over the ETSI GS QKD 014 API. For ``enc_keys`` from master M here for
slave S served at node Y:

* Y is this node: a fresh key from the node's own random source goes into its
  :class:`~keysource.kme.relay_store.LocalKeyStore` bound to (M, S), and to M.
* Y is a neighbour and the direct link is the best route: the link's
  :class:`~keysource.kme.node.KmeNode` does it with the binding protocol of a KME pair.
* Otherwise the key is relayed X -> ... -> Y along :func:`keysource.network.routing.
  shortest_path` (trusted nodes; the maths is :mod:`keysource.network.key_relay`):

  1. X draws a fresh 256-bit key K and, from the pool of the link to the next node, three
     link keys per key: the pad, the hop's one-time MAC key and the MAC key of the
     confirmation coming back. Link keys are drawn with the link's binding protocol (bound
     to the reserved pair :data:`RELAY_MASTER` -> :data:`RELAY_SLAVE`, master at the
     sending end), so the allocator of each link still decides alone who gets which key.
  2. X posts the sealed frames to the next node (``POST /kme/v1/relay``, mutual TLS with
     the KME certificates, only from a neighbour). That node claims the named link keys
     (once: a used key_ID is unknown), checks the MAC, removes the pad and seals K for the
     next hop with keys of the next link (drawn while it claimed: the two durable writes
     overlap; keys drawn for a frame then refused are spent unused); and so on.
  3. Y stores K in its own key store, bound to (M, S), then answers with a confirmation per
     key, authenticated with the confirmation MAC key of the hop; each node checks the one
     it gets and answers its own upstream.
  4. Only when X has checked the confirmations does it hand the keys to M.

  A failure anywhere (a node down, a pool empty, a bad MAC) fails the whole request: X never
  hands the key out; Y may hold a copy bound to a key_ID that nobody learns, destroyed when
  its lifetime ends. So no key is ever usable at one end only, nor handed out twice.

Every refused frame (bad MAC, replay, unknown link key, wrong route) is counted by reason and
logged with its relay ID, never with key material.

Routes: the node knows its own links (free keys, last QBER); every node of a relay's route
answers with its own links' states (and what the nodes after it said), which count for
``HEARD_FRESH_S``; of a far link it heard nothing about it assumes it works until a relay
over it fails, then avoids it for ``avoid_s`` seconds. A failed relay is tried again around
the failed link (``MAX_ROUTES_TRIED``), and a node refuses to relay over its own link whose
last QBER is over the threshold.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from keysource.network import key_relay, routing
from keysource.network.key_relay import (
    KEY_BYTES,
    Confirm,
    RelayFrame,
    RelayHeader,
    RelayLedger,
    RelayRefused,
)
from keysource.network.topology import RESERVED_SAE_PREFIX, Topology

from . import etsi
from .node import KmeNode, PeerUnavailable, SaeRegistry, lookup_error, sweep_until
from .pool import KeyLookupError, PoolKey, parts_for_size
from .relay_store import DuplicateKey, LocalKeyStore

log = logging.getLogger(__name__)
T = TypeVar("T")

RELAY_MASTER = f"{RESERVED_SAE_PREFIX}sender"  # link keys drawn for a relay hop are bound to
RELAY_SLAVE = f"{RESERVED_SAE_PREFIX}receiver"  # this pair, master at the hop's sender
LINK_KEYS_PER_KEY = 3  # pad, MAC key, confirmation MAC key
RELAY_KEY_BITS = KEY_BYTES * 8
HEARSAY_KEYS = 1_000  # what a node assumes of a link it is not on (until it hears more)
HEARD_FRESH_S = 30.0  # a far link's state reported along a relay's route counts this long
RELAY_RESERVE = LINK_KEYS_PER_KEY * 8  # link keys bound ahead for the next relays of a hop
MAX_ROUTES_TRIED = 3  # a relay that fails on a link is tried again around it, this often
# After a neighbour did not answer, relays over its link are refused this long before any
# link key is drawn: SAEs retrying at once must not burn the link's pool on a dead node.
UNREACHABLE_HOLD_S = 0.5


class RelayFailed(Exception):
    """A relay could not be completed; ``link`` names the link it failed on, if known."""

    def __init__(self, message: str, link: str | None = None) -> None:
        super().__init__(message)
        self.link = link


class RelayChannel(Protocol):
    """How a node posts relay frames to a neighbour (HTTPS with mutual TLS)."""

    async def relay(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /kme/v1/relay; the confirmations, or RelayFailed / PeerUnavailable."""
        ...


class LinkSaes:
    """The SAE registry of a network node's links: the node's SAEs, and the relay's own
    receiving end, so a link's allocator binds relay link keys asked for by its follower."""

    def __init__(self, saes: SaeRegistry) -> None:
        self.saes = saes

    def knows(self, sae_id: str) -> bool:
        return sae_id == RELAY_SLAVE or self.saes.knows(sae_id)


@dataclass
class _Hop:
    """One relayed key as a node handles it: where it is and what it is."""

    header: RelayHeader
    key: bytes


class NetworkNode:
    """The ETSI operations of a network node (see module doc); the server calls it."""

    def __init__(
        self,
        *,
        topology: Topology,
        name: str,
        links: Mapping[str, KmeNode],
        relay_peers: Mapping[str, RelayChannel],
        store: LocalKeyStore,
        saes: SaeRegistry,
        limits: etsi.Limits,
        link_qber: Callable[[str], float | None] = lambda _peer: None,
        qber_threshold: float = 0.11,
        avoid_s: float = 30.0,
    ) -> None:
        topology.node(name)
        self.topology = topology
        self.name = name
        self.kme_id = name
        self.links = dict(links)
        self.relay_peers = dict(relay_peers)
        self.store = store
        self.saes = saes
        self.limits = limits
        self.link_qber = link_qber
        self.qber_threshold = qber_threshold
        self.avoid_s = avoid_s
        self.ledger = RelayLedger()
        self.counts = {"relayed": 0, "forwarded": 0, "received": 0, "failed": 0, "local": 0}
        self._avoid: dict[str, float] = {}  # link name -> until (monotonic)
        # Far links' states as the nodes on a relay's route reported them: name -> (state, at)
        self._heard: dict[str, tuple[routing.LinkState, float]] = {}
        self._unreachable: dict[str, float] = {}  # neighbour -> no relay to it until
        self._db_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"store-{name}")

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, functools.partial(fn, *args))

    def close(self) -> None:
        self._db_thread.shutdown(wait=True)
        self.store.close()
        for link in self.links.values():
            link.close()

    # -- who is who ---------------------------------------------------------------------

    def link_for(self, kme_id: str) -> KmeNode | None:
        """The link to neighbour ``kme_id`` (whose KME may call the KME-to-KME routes)."""
        return self.links.get(kme_id)

    def handle_knows_sae(self, sae_id: str) -> bool:
        return self.saes.knows(sae_id)

    async def called_by(self, sae_id: str) -> None:
        """Nothing to learn: the topology says which node serves which SAE."""

    def handle_peer_serves(self, sae_id: str) -> bool:
        """Not a pair: the topology, not the calls, says where an SAE is served."""
        return False

    def _node_of(self, sae_id: str, what: str) -> str:
        node = self.topology.node_of_sae(sae_id)
        if node is None:
            raise etsi.BadRequest(
                f"unknown {what} {sae_id}: no KME of network {self.topology.name!r} serves it",
                [{what: sae_id, "registered": False}])
        return node

    # -- routes -------------------------------------------------------------------------

    async def link_states(self) -> dict[str, routing.LinkState]:
        """What this node knows of every link now (see module doc)."""
        now = time.monotonic()
        states: dict[str, routing.LinkState] = {}
        peers = list(self.links)  # own links' pools, asked together (a thread each)
        free = dict(zip(peers, await asyncio.gather(
            *(self.links[peer].free_count() for peer in peers)), strict=True))
        for link in self.topology.links:
            until = self._avoid.get(link.name)
            if until is not None and until > now:
                states[link.name] = routing.LinkState(keys=0)
            elif self.name in (link.a, link.b):
                peer = link.other(self.name)
                states[link.name] = routing.LinkState(keys=free[peer],
                                                      qber=self.link_qber(peer))
            else:
                heard = self._heard.get(link.name)
                fresh = heard is not None and heard[1] > now - HEARD_FRESH_S
                states[link.name] = heard[0] if heard and fresh else routing.LinkState(
                    keys=HEARSAY_KEYS)
        return states

    async def own_link_report(self) -> dict[str, dict[str, Any]]:
        """This node's links as it tells the nodes upstream of a relay (no key material).
        Each link's pool answers on its own thread: asked together, not one after another."""
        peers = list(self.links)
        free = await asyncio.gather(*(self.links[peer].free_count() for peer in peers))
        return {self._link_name(peer): {"keys": keys, "qber": self.link_qber(peer)}
                for peer, keys in zip(peers, free, strict=True)}

    def _hear(self, report: object) -> dict[str, dict[str, Any]]:
        """Keep the far links' states a downstream node reported; what was kept."""
        kept: dict[str, dict[str, Any]] = {}
        if not isinstance(report, dict):
            return kept
        known = {link.name for link in self.topology.links}
        now = time.monotonic()
        for name, state in list(report.items())[:len(known)]:
            if name not in known or self.name in str(name).split("~"):
                continue  # a link not in the topology, or one of ours: we know better
            keys, qber = (state.get("keys"), state.get("qber")) if isinstance(
                state, dict) else (None, None)
            if (isinstance(keys, bool) or not isinstance(keys, int) or keys < 0
                    or not (qber is None or isinstance(qber, float) and 0 <= qber <= 1)):
                continue
            self._heard[name] = (routing.LinkState(keys=keys, qber=qber), now)
            kept[name] = {"keys": keys, "qber": qber}
        return kept

    async def route_to(self, target: str, number: int,
                       without: frozenset[str] = frozenset()) -> list[str] | None:
        """The best route now for ``number`` keys, avoiding the links named in ``without``."""
        states = await self.link_states()
        for name in without:
            states[name] = routing.LinkState(keys=0)
        return routing.shortest_path(
            self.topology, states, self.name, target,
            keys_needed=LINK_KEYS_PER_KEY * number, qber_threshold=self.qber_threshold)

    def _link_name(self, neighbour: str) -> str:
        return "~".join(sorted((self.name, neighbour)))

    def _avoid_link(self, link: str | None) -> None:
        """Avoid a link this node is not on for a while (of its own links it knows the
        state: their pools, and whether the neighbour answers the next relay)."""
        if link is not None and self.name not in link.split("~"):
            self._avoid[link] = time.monotonic() + self.avoid_s

    # -- ETSI ---------------------------------------------------------------------------

    async def status(self, master: str, slave: str) -> dict[str, Any]:
        target = self._node_of(slave, "slave_SAE_ID")
        if target == self.name:
            count = self.limits.max_key_per_request
        else:
            route = await self.route_to(target, 1)
            if route is None:
                raise _no_path(self.name, target)
            if len(route) == 2:
                return await self.links[target].status(master, slave)
            free = await self.links[route[1]].free_count()
            count = free // LINK_KEYS_PER_KEY
        return etsi.status_body(
            source_kme=self.name, target_kme=target, master=master, slave=slave,
            stored_key_count=count, max_key_count=count, limits=self.limits)

    async def enc_keys(self, master: str, slave: str,
                       request: etsi.EncKeysRequest) -> list[PoolKey]:
        if master == slave:
            raise etsi.BadRequest("slave_SAE_ID must differ from the caller's SAE_ID")
        target = self._node_of(slave, "slave_SAE_ID")
        if target == self.name:
            if not self.saes.knows(slave):
                raise etsi.BadRequest(f"unknown slave_SAE_ID {slave}: it has no certificate "
                                      "of this network's CA", [{"slave_SAE_ID": slave}])
            keys = [PoolKey(str(uuid.uuid4()), os.urandom(request.size // 8), (self.name,))
                    for _ in range(request.number)]
            await self._db(self.store.put, master, slave, keys)
            self.counts["local"] += len(keys)
            log.info("enc_keys: %d key(s) for %s -> %s, both at %s", len(keys), master, slave,
                     self.name)
            return keys
        if target in self.links and routing.usable(
                (await self.link_states())[self._link_name(target)],
                request.number * parts_for_size(request.size), self.qber_threshold):
            return await self.links[target].enc_keys(master, slave, request)  # neighbours
        failed: list[tuple[list[str], RelayFailed]] = []
        for _ in range(MAX_ROUTES_TRIED):
            route = await self.route_to(target, request.number,
                                        frozenset(f.link for _, f in failed if f.link))
            if route is None:
                break
            if len(route) == 2:
                return await self.links[target].enc_keys(master, slave, request)
            if request.size != RELAY_KEY_BITS:
                raise etsi.BadRequest(
                    f"keys relayed by trusted nodes are {RELAY_KEY_BITS} bits; ask size="
                    f"{RELAY_KEY_BITS} (slave_SAE_ID {slave} is {len(route) - 1} hops away)",
                    [{"size": request.size, "route": route}])
            try:
                return await self._relay_from_here(route, master, slave, request.number)
            except RelayFailed as exc:  # nothing was handed out: another route may do
                failed.append((route, exc))
                if exc.link is None:
                    break
        if not failed:
            raise _no_path(self.name, target)
        last = failed[-1][1]
        raise etsi.Unavailable(
            f"the key could not be relayed to {target}: {last}; nothing was handed out, "
            "retry", [{"route": r, "failed_link": f.link, "reason": str(f)} for r, f in failed])

    async def _relay_from_here(self, route: list[str], master: str, slave: str,
                               number: int) -> list[PoolKey]:
        """One relay along ``route``: the master's keys, or RelayFailed (nothing handed out)."""
        hops = [_Hop(key_relay.new_relay(str(uuid.uuid4()), master, slave, route,
                                         # placeholders: _forward pads each hop itself
                                         str(uuid.UUID(int=1)), str(uuid.UUID(int=2))),
                     os.urandom(KEY_BYTES)) for _ in range(number)]
        for hop in hops:
            self.ledger.hold(hop.header, hop.key)
        try:
            confirms, _ = await self._forward(hops, 0)
            keys = [self.ledger.confirmed(c) for c in confirms]
        except (RelayFailed, RelayRefused) as exc:
            for hop in hops:
                self.ledger.discard(hop.header.relay_id)
            self.counts["failed"] += 1
            failure = exc if isinstance(exc, RelayFailed) else RelayFailed(
                f"the relay's confirmation was refused ({exc.reason})", None)
            self._avoid_link(failure.link)
            log.warning("relay %s -> %s over %s failed: %s", master, slave,
                        " -> ".join(route), failure)
            raise failure from None
        self.counts["relayed"] += number
        log.info("enc_keys: %d key(s) for %s -> %s relayed over %s", number, master, slave,
                 routing.describe(route))
        return [PoolKey(p.key_id, p.key, tuple(route)) for p in keys]

    async def _draw_link_keys(self, nxt: str, number: int) -> list[PoolKey]:
        """The pad, MAC and confirmation MAC keys of ``number`` relayed keys on the link to
        ``nxt``; RelayFailed when that link is over its QBER threshold or has too few.

        Binding (a round trip to the link's allocator and a durable write there) happens
        only when the keys bound ahead run out; it then binds the next relays' keys too,
        as many as this request's twice over (at least RELAY_RESERVE), so a stream of
        requests of one size binds once every three."""
        link_name = self._link_name(nxt)
        qber = self.link_qber(nxt)
        if qber is not None and qber > self.qber_threshold:
            raise RelayFailed(f"{link_name} is over its QBER threshold ({qber * 100:.1f}% > "
                              f"{self.qber_threshold * 100:.0f}%: an eavesdropper?)", link_name)
        if self._unreachable.get(nxt, 0.0) > time.monotonic():
            raise RelayFailed(f"{nxt} did not answer a moment ago; no link key was drawn",
                              link_name)
        count = LINK_KEYS_PER_KEY * number
        try:
            return await self.links[nxt].bind_and_take(
                RELAY_MASTER, RELAY_SLAVE, count, RELAY_KEY_BITS,
                reserve=max(RELAY_RESERVE, 2 * count))
        except etsi.EtsiError as exc:
            raise RelayFailed(f"no link keys on {link_name}: {exc.message}", link_name) from None

    async def _forward(self, hops: list[_Hop], position: int,
                       drawing: asyncio.Future[list[PoolKey]] | None = None
                       ) -> tuple[list[Confirm], dict[str, dict[str, Any]]]:
        """Seal ``hops`` for the next node of their route, send them, check its confirms.

        ``drawing``: the next link's keys, already being drawn (see handle_relay).
        Returns the checked confirmations (one per hop, in order) and the far links' states
        the nodes downstream reported; RelayFailed otherwise.
        """
        route = hops[0].header.route
        nxt = route[position + 1]
        link_name = self._link_name(nxt)
        drawn = await (drawing if drawing is not None
                       else self._draw_link_keys(nxt, len(hops)))
        frames, confirm_keys = [], []
        for i, hop in enumerate(hops):
            pad, mac, confirm_mac = drawn[LINK_KEYS_PER_KEY * i:LINK_KEYS_PER_KEY * (i + 1)]
            if position == 0:
                header = RelayHeader(hop.header.relay_id, hop.header.key_id, hop.header.master,
                                     hop.header.slave, route, 0, pad.key_ID, mac.key_ID)
            else:
                header = key_relay.next_hop(hop.header, pad.key_ID, mac.key_ID)
            frames.append(key_relay.seal_hop(header, hop.key, pad.key, mac.key))
            confirm_keys.append(confirm_mac)
        body = {"frames": [f.to_json() for f in frames],
                "confirm_mac_IDs": [k.key_ID for k in confirm_keys]}
        try:
            answer = await self.relay_peers[nxt].relay(body)
        except PeerUnavailable as exc:
            self._unreachable[nxt] = time.monotonic() + UNREACHABLE_HOLD_S
            raise RelayFailed(f"{nxt} is unreachable ({exc})", link_name) from None
        except RelayFailed as exc:
            raise RelayFailed(f"{nxt}: {exc}", exc.link or link_name) from None
        heard = self._hear(answer.get("links"))
        raw = answer.get("confirms")
        if not isinstance(raw, list) or len(raw) != len(frames):
            raise RelayFailed(f"{nxt} answered without one confirmation per key", link_name)
        confirms = []
        for frame, key, item in zip(frames, confirm_keys, raw, strict=True):
            if not isinstance(item, dict):
                raise RelayFailed(f"{nxt} sent a malformed confirmation", link_name)
            try:
                confirm = Confirm.from_json(item)
                if (confirm.relay_id, confirm.key_id, confirm.route, confirm.hop,
                        confirm.mac_id) != (frame.header.relay_id, frame.header.key_id, route,
                                            position + 1, key.key_ID):
                    raise RelayRefused("malformed", "a confirmation for another relay")
                key_relay.open_confirm(confirm, key.key, self.name)
            except RelayRefused as exc:
                self._refused(exc, nxt)
                raise RelayFailed(f"a confirmation from {nxt} was refused ({exc.reason})",
                                  link_name) from None
            confirms.append(confirm)
        return confirms, heard

    def _refused(self, exc: RelayRefused, sender: str) -> RelayRefused:
        self.ledger.refuse(exc)
        log.warning("relay frame from %s refused (%s): %s", sender, exc.reason, exc)
        return exc

    async def dec_keys(self, master: str, slave: str, key_ids: list[str] | tuple[str, ...]
                       ) -> list[PoolKey]:
        if await self._db(self.store.holds_any, list(key_ids)):
            try:
                keys = await self._db(self.store.take_for_slave, master, slave, list(key_ids))
            except KeyLookupError as exc:
                raise lookup_error(exc) from None
            log.info("dec_keys: %d key(s) for %s from %s (this node's store)", len(keys),
                     slave, master)
            return keys
        origin = self.topology.node_of_sae(master)
        link = self.links.get(origin) if origin is not None else None
        if link is None:
            raise etsi.BadRequest("key_ID unknown or already delivered (nothing was delivered)",
                                  [{"unknown_key_IDs": list(key_ids)}])
        return await link.dec_keys(master, slave, key_ids)

    # -- the relay, at a trusted node or at the last node ----------------------------------

    async def handle_relay(self, sender: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Frames from neighbour ``sender``: open, then store (last node) or forward; the
        confirmations for ``sender``. RelayRefused (counted) or RelayFailed otherwise."""
        link = self.links.get(sender)
        if link is None:
            raise self._refused(RelayRefused("not_on_route", f"{sender} is not a neighbour"),
                                sender)
        raw_frames, raw_ids = body.get("frames"), body.get("confirm_mac_IDs")
        if (not isinstance(raw_frames, list) or not isinstance(raw_ids, list)
                or not 0 < len(raw_frames) <= self.limits.max_key_per_request
                or len(raw_ids) != len(raw_frames)):
            raise self._refused(RelayRefused(
                "malformed", "frames and confirm_mac_IDs: two lists of equal length, "
                f"1-{self.limits.max_key_per_request}"), sender)
        try:
            frames = [RelayFrame.from_json(f) if isinstance(f, dict) else _not_object()
                      for f in raw_frames]
            confirm_ids = [key_relay.parse_uuid(i, "confirm_mac_ID") for i in raw_ids]
            route = frames[0].header.route
            for frame in frames:
                header = frame.header
                if header.route != route or header.sender != sender:
                    raise RelayRefused("not_on_route", f"relay {header.relay_id} hop "
                                                       f"{header.hop} is not from {sender}")
                if header.receiver != self.name:
                    raise RelayRefused("not_on_route", f"relay {header.relay_id} hop "
                                                       f"{header.hop} is for {header.receiver}")
            for frame in frames:
                self.ledger.check_new(frame.header)
        except RelayRefused as exc:
            if exc.reason != "replayed":  # check_new counted it already
                self.ledger.refuse(exc)
            log.warning("relay frame from %s refused (%s): %s", sender, exc.reason, exc)
            raise
        claim = [i for f, c in zip(frames, confirm_ids, strict=True)
                 for i in (f.header.pad_id, f.header.mac_id, c)]
        position = route.index(self.name)
        # A trusted node draws the next link's keys while it claims this link's: the two
        # durable writes (one per link pool, each its own thread) overlap instead of adding
        # up. The price: keys drawn for a frame then refused are spent unused (a neighbour's
        # bad frame; counted in the log).
        drawing = None
        if position < len(route) - 1:
            drawing = asyncio.ensure_future(self._draw_link_keys(route[position + 1],
                                                                 len(frames)))
        try:
            try:
                link_keys = await link.dec_keys(RELAY_MASTER, RELAY_SLAVE, claim,
                                                redeliverable=False)
            except etsi.EtsiError as exc:
                raise self._refused(RelayRefused(
                    "unknown_key", f"relay {frames[0].header.relay_id}: link keys unknown or "
                    f"used ({exc.message})"), sender) from None
            hops = []
            for i, frame in enumerate(frames):
                pad, mac, _ = link_keys[LINK_KEYS_PER_KEY * i:LINK_KEYS_PER_KEY * (i + 1)]
                try:
                    hops.append(_Hop(frame.header,
                                     key_relay.open_hop(frame, pad.key, mac.key, self.name)))
                except RelayRefused as exc:
                    raise self._refused(exc, sender) from None
        except BaseException:
            if drawing is not None:
                await self._abandon(drawing, route[position + 1])
            raise
        downstream: dict[str, dict[str, Any]] = {}
        # This node's link report (a routing hint upstream) is read while the keys go on,
        # once this relay's draw on the next link is done, so it counts what the draw took.
        report = asyncio.ensure_future(self._link_report_after(drawing))
        try:
            if drawing is None:
                await self._keep(hops, sender)
            else:
                _, downstream = await self._forward(hops, position, drawing)
                self.counts["forwarded"] += len(hops)
        except BaseException:
            await asyncio.gather(report, return_exceptions=True)  # not left running
            raise
        confirms = []
        for i, hop in enumerate(hops):
            confirm_mac = link_keys[LINK_KEYS_PER_KEY * i + 2]
            confirm = Confirm(hop.header.relay_id, hop.header.key_id, route, position,
                              confirm_mac.key_ID)
            confirms.append(key_relay.seal_confirm(confirm, confirm_mac.key).to_json())
        return {"confirms": confirms, "links": {**downstream, **await report}}

    async def _link_report_after(self, drawing: asyncio.Future[list[PoolKey]] | None
                                 ) -> dict[str, dict[str, Any]]:
        if drawing is not None:
            await asyncio.wait({drawing})  # its outcome is _forward's to handle
        return await self.own_link_report()

    async def _abandon(self, drawing: asyncio.Future[list[PoolKey]], nxt: str) -> None:
        """The relay was refused before it could go on: the next link's keys drawn for it
        meanwhile are never used (no frame was sealed with them)."""
        try:
            drawn = await drawing
        except RelayFailed:
            return  # none were drawn
        except Exception as exc:  # the refusal is what the sender hears; this is logged
            log.warning("drawing link keys of %s for a refused relay failed too: %r",
                        self._link_name(nxt), exc)
            return
        log.warning("%d link key(s) of %s drawn for a refused relay are discarded",
                    len(drawn), self._link_name(nxt))

    async def _keep(self, hops: list[_Hop], sender: str) -> None:
        """Last node: store the keys for their slave (all of one pair, checked here)."""
        master, slave = hops[0].header.master, hops[0].header.slave
        if any((h.header.master, h.header.slave) != (master, slave) for h in hops):
            raise self._refused(RelayRefused("malformed", "one request, one SAE pair"), sender)
        if not self.saes.knows(slave):
            raise self._refused(RelayRefused(
                "unknown_sae", f"slave_SAE_ID {slave} is not served at {self.name}"), sender)
        try:
            await self._db(self.store.put, master, slave,
                           [PoolKey(h.header.key_id, h.key, tuple(h.header.route))
                            for h in hops])
        except DuplicateKey as exc:
            raise self._refused(RelayRefused("replayed", str(exc)), sender) from None
        self.counts["received"] += len(hops)
        log.info("relay: %d key(s) for %s -> %s stored at %s", len(hops), master, slave,
                 self.name)

    # -- upkeep and figures -------------------------------------------------------------

    async def run_store_sweeper(self, stop: asyncio.Event, interval_s: float = 5.0) -> None:
        """Destroy keys of the node's own store past their grace or lifetime, until stop."""
        await sweep_until(stop, functools.partial(self._db, self.store.sweep), self.name,
                          interval_s)

    async def pool_stats(self) -> dict[str, Any]:
        return {
            "KME_ID": self.name,
            "network": self.topology.name,
            "links": {peer: await link.pool_stats() for peer, link in self.links.items()},
            "local_keys": await self._db(self.store.counts),
            "relay": {**self.counts, "refused": dict(self.ledger.refused)},
            "heard_links": {name: {"keys": state.keys, "qber": state.qber,
                                   "age_s": round(time.monotonic() - at, 1)}
                            for name, (state, at) in sorted(self._heard.items())},
        }


def _not_object() -> RelayFrame:
    raise RelayRefused("malformed", "a frame must be a JSON object")


def _no_path(source: str, target: str) -> etsi.Unavailable:
    return etsi.Unavailable(
        f"no usable path from {source} to {target} now (every route has a link without "
        "keys, over its QBER threshold, or down); retry later",
        [{"source_KME_ID": source, "target_KME_ID": target}])
