"""Running one node of a QKD network: ``qsecret kme serve --topology FILE --node NAME``.

Directory layout under ``--data DIR`` (every node of a machine may share one DIR)::

    DIR/pki/...                          the network's PKI: one KME certificate per node, the
                                         SAE certificates, link.psk (copy it to every machine)
    DIR/<node>/links/<neighbour>.sqlite  the pool of the link to each neighbour
    DIR/<node>/own-keys.sqlite           relayed and same-node keys (keysource.kme.relay_store)

The node prints ``ready NODE URL ...`` once it listens, ``keys ready ...`` (with
``--keys-ready N``) once each of its link pools holds N free keys, then a status line every
few seconds. Each link runs the emulated QKD link over TCP: the topology's ``b`` end listens
on the link's port, the ``a`` end connects to it and is the link's allocator. Each link
authenticates with its own secret, derived from the PKI's link.psk and the link's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from keysource.network.topology import Link, Passes, Topology

from .link import LinkMonitor, run_link_endpoint
from .network_node import LinkSaes, NetworkNode
from .node import KmeNode
from .peer import HttpPeer
from .pki import Pki, PkiSaeRegistry
from .pool import DEFAULT_BINDING_TTL_S, KeyPool
from .relay_store import LocalKeyStore
from .runtime import (
    KmeSettings,
    _announce_keys,
    _every,
    _guard_link,
    _install_signal_handlers,
    _make_psk,
    _say,
    _shutdown,
    _url_host,
)
from .server import is_loopback, start_server


class NodeSaes:
    """The SAEs a network node serves: listed at this node by the topology, and holding a
    valid SAE certificate of the network's CA."""

    def __init__(self, listed: Sequence[str], pki: Pki) -> None:
        self.listed = frozenset(listed)
        self._pki = PkiSaeRegistry(pki)

    def knows(self, sae_id: str) -> bool:
        return sae_id in self.listed and self._pki.knows(sae_id)


QBER_ALARM = 0.11  # the relay avoids a link whose last QBER is over this


def link_psk(psk: bytes, link_name: str) -> bytes:
    """Each link's own initial authentication secret (never two links on one pad stream)."""
    return hashlib.shake_256(b"qsecret/v1/link-psk\x00" + link_name.encode() + b"\x00"
                             + psk).digest(len(psk))


def link_pool_path(data: Path, node: str, neighbour: str) -> Path:
    return data / node / "links" / f"{neighbour}.sqlite"


async def run_network_node(
    settings: KmeSettings,
    topology: Topology,
    node_name: str,
    *,
    listen_host: str | None = None,
    stop: asyncio.Event | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """One node (its KME, its link pools and link ends) until SIGINT/SIGTERM or ``stop``."""
    me = topology.node(node_name)
    stop = stop or asyncio.Event()
    _install_signal_handlers(stop)
    pki = Pki(settings.data / "pki")
    extra_hosts = sorted({n.host for n in topology.nodes if not is_loopback(n.host)})
    for created in pki.ensure(
        kme_ids=[n.name for n in topology.nodes],
        sae_ids=[s for n in topology.nodes for s in n.saes],
        hostnames=[*settings.hostnames, *extra_hosts], psk=_make_psk(),
    ):
        _say(out, f"created {created}")
    saes = NodeSaes(me.saes, pki)
    links: dict[str, KmeNode] = {}
    peers: dict[str, HttpPeer] = {}
    monitors: dict[str, LinkMonitor] = {}
    client_ctx = None if settings.plain_http else pki.client_context(pki.kme(me.name))
    for link in topology.links_of(me.name):
        neighbour = topology.node(link.other(me.name))
        links[neighbour.name] = KmeNode(
            kme_id=me.name, peer_kme_id=neighbour.name, allocator=(link.a == me.name),
            limits=settings.limits, saes=LinkSaes(saes),
            pool=KeyPool(link_pool_path(settings.data, me.name, neighbour.name),
                         max_key_count=settings.max_key_count,
                         redelivery_grace_s=settings.redelivery_grace_s,
                         binding_limits=settings.binding_limits))
        url = neighbour.url if not settings.plain_http else neighbour.url.replace(
            "https://", "http://", 1)
        peers[neighbour.name] = HttpPeer(url, ssl_context=client_ctx, own_kme_id=me.name)
        links[neighbour.name].peer = peers[neighbour.name]
        monitors[neighbour.name] = LinkMonitor()
    ttl = (settings.binding_limits.ttl_s if settings.binding_limits else DEFAULT_BINDING_TTL_S)
    store = LocalKeyStore(settings.data / me.name / "own-keys.sqlite",
                          redelivery_grace_s=settings.redelivery_grace_s, ttl_s=ttl)
    node = NetworkNode(
        topology=topology, name=me.name, links=links, relay_peers=peers, store=store,
        saes=saes, limits=settings.limits, qber_threshold=QBER_ALARM,
        link_qber=lambda peer: monitors[peer].snapshot()["last_qber"])
    runners: list[web.AppRunner] = []
    tasks: list[asyncio.Task[None]] = []
    eve_servers: list[asyncio.Server] = []
    host = listen_host or me.host
    try:
        ctx = None if settings.plain_http else pki.server_context(me.name)
        runner, bound = await start_server(
            node, host=host, port=me.port, ssl_context=ctx,
            link_stats=lambda: {peer: m.snapshot() for peer, m in monitors.items()},
            relay=node.handle_relay)
        runners.append(runner)
        scheme = "http" if settings.plain_http else "https"
        _say(out, f"ready {me.name} {scheme}://{_url_host(host)}:{bound} (network "
                  f"{topology.name}, links to {', '.join(sorted(links)) or 'nobody'}; "
                  f"SAEs {', '.join(sorted(me.saes)) or 'none'})")
        for link_node in links.values():
            if link_node.allocator:
                tasks.append(asyncio.create_task(link_node.run_sync(stop)))
            tasks.append(asyncio.create_task(link_node.run_sweeper(stop)))
        tasks.append(asyncio.create_task(node.run_store_sweeper(stop)))
        if settings.link:
            psk = pki.read_psk()
            for link in topology.links_of(me.name):
                peer = link.other(me.name)
                allocator = link.a == me.name
                params = link.link_params(seed=settings.link_options.get("seed"))
                if settings.link_options.get("frame_bits"):
                    params = dataclasses.replace(
                        params, frame_bits=settings.link_options["frame_bits"])
                listen = topology.node(link.b).host if allocator else host
                port = link.port
                if allocator and link.eve > 0:  # the topology's eavesdropper on this fibre
                    eve_server, port = await _eavesdropper(link, listen, link.port)
                    eve_servers.append(eve_server)
                run = functools.partial(
                    run_link_endpoint, links[peer], role="alice" if allocator else "bob",
                    host=listen, port=port, params=params, psk=link_psk(psk, link.name),
                    auth_store=settings.data / me.name / "links" / f"{peer}-auth.state",
                    monitor=monitors[peer])
                tasks.append(asyncio.create_task(_guard_link(
                    _run_in_passes(link.passes, run, stop), monitors[peer], out)))
            if settings.keys_ready:
                tasks.append(asyncio.create_task(
                    _announce_keys(list(links.values()), settings.keys_ready, stop, out,
                                   labels=[f"{me.name}~{peer}" for peer in links])))
        else:
            _say(out, "no QKD links (--link none): the pools serve only keys put there "
                      "otherwise")
        tasks.append(asyncio.create_task(
            _network_status_loop(node, monitors, stop, settings.status_interval_s, out)))
        await stop.wait()
    finally:
        stop.set()
        await _shutdown(tasks, runners)
        for eve_server in eve_servers:
            eve_server.close()
        for peer_channel in peers.values():
            await peer_channel.aclose()
        node.close()
    _say(out, "stopped")
    return 0


async def _run_in_passes(passes: Passes | None,
                         run: Callable[..., Awaitable[None]], stop: asyncio.Event) -> None:
    """Run a link end until ``stop``; a free-space link only while its satellite is in view
    (``passes``, on the wall clock both ends share): stopped at the end of each pass, started
    again at the next. Its pool keeps what a pass made; the relay uses it meanwhile."""
    if passes is None:
        await run(stop=stop)
        return
    while not stop.is_set():
        start, end = passes.window(time.time())
        if start > time.time():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), start - time.time())
            continue
        in_view = asyncio.Event()

        async def end_of_pass(end: float = end, in_view: asyncio.Event = in_view) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, end - time.time()))
            in_view.set()

        ender = asyncio.create_task(end_of_pass())
        try:
            await run(stop=in_view)
        finally:
            ender.cancel()


async def _eavesdropper(link: Link, host: str, port: int) -> tuple[asyncio.Server, int]:
    """An intercept-resend eavesdropper on ``link`` (its ``eve`` fraction of the pulses), in
    this process between the link's ``a`` end and the ``b`` end at host:port; the loopback
    port the ``a`` end connects to instead. The ``qsecret eve`` proxy's attack, kept quiet."""
    import argparse

    from keysource.qkd.eve_proxy import EveProxy, _pump

    class QuietEve(EveProxy):
        def _emit(self, record: dict[str, Any]) -> None:
            pass  # the link's QBER and aborts say what Eve did; no line per block

    params = link.link_params()
    eve = QuietEve(argparse.Namespace(
        fibre_km=params.fibre_km, loss_db_per_km=params.loss_db_per_km, seed=None,
        intercept_fraction=link.eve, pns=False, tamper_classical=False, tamper_every=1))

    async def handle(a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter) -> None:
        try:
            b_reader, b_writer = await asyncio.open_connection(host, port)
        except OSError:
            a_writer.close()  # the a end reconnects, as to a b end that is down
            return
        await asyncio.gather(_pump(a_reader, b_writer, eve.alice_to_bob),
                             _pump(b_reader, a_writer, lambda frame: frame))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def network_status_line(node: NetworkNode, monitors: dict[str, LinkMonitor],
                              started: float) -> str:
    parts = []
    for peer, link in sorted(node.links.items()):
        stats = await link.pool_stats()
        snap = monitors[peer].snapshot()
        qber = snap["last_qber"]
        parts.append(f"{peer} pool {stats['free']}/{stats['max_key_count']} "
                     f"{'up' if snap['connected'] else 'down'} "
                     f"{snap['key_rate_per_s']:.1f} keys/s QBER "
                     f"{'-' if qber is None else f'{qber * 100:.2f}%'}")
    refused = sum(node.ledger.refused.values())
    counts = node.counts
    return (f"[{time.strftime('%H:%M:%S')} +{time.monotonic() - started:.0f}s] {node.name} | "
            + " | ".join(parts)
            + f" | relayed {counts['relayed']} forwarded {counts['forwarded']} received "
              f"{counts['received']} failed {counts['failed']} refused {refused}")


async def _network_status_loop(node: NetworkNode, monitors: dict[str, LinkMonitor],
                               stop: asyncio.Event, interval_s: float, out: TextIO) -> None:
    await _every(interval_s, stop, out,
                 lambda started: network_status_line(node, monitors, started))


def format_network_stats(stats: dict[str, Any]) -> str:
    """``qsecret kme status`` of a network node: one line per link, then the relay's counts."""
    pool, links = stats["pool"], stats.get("link", {})
    lines = [f"{pool['KME_ID']} (network {pool['network']})"]
    for peer, link_pool in sorted(pool["links"].items()):
        snap = links.get(peer, {})
        qber = snap.get("last_qber")
        lines.append(
            f"  link to {peer} ({link_pool['role']}): pool {link_pool['stored']}/"
            f"{link_pool['max_key_count']} (free {link_pool['free']}) | "
            f"{'up' if snap.get('connected') else 'down'} | "
            f"{snap.get('key_rate_per_s', 0):.1f} keys/s | "
            f"QBER {'-' if qber is None else f'{qber * 100:.2f}%'}"
            + (" ALARM: over the QBER threshold, an eavesdropper?" if qber is not None
               and qber > QBER_ALARM else ""))
    relay = pool["relay"]
    refused = ", ".join(f"{k} {v}" for k, v in relay["refused"].items() if v) or "none"
    lines.append(f"  own keys: {pool['local_keys']['waiting']} waiting for their slave SAE | "
                 f"relayed {relay['relayed']}, forwarded {relay['forwarded']}, received "
                 f"{relay['received']}, failed {relay['failed']} | refused: {refused}")
    return "\n".join(lines)


__all__ = ["NodeSaes", "format_network_stats", "link_psk", "run_network_node"]
