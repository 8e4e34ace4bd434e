"""Running KMEs: a pair in one process, or one KME linked to its peer over TCP.

Directory layout under ``--data DIR``::

    DIR/pki/...                   the PKI (see keysource.kme.pki) and link.psk
    DIR/<KME_ID>/pool.sqlite      each KME's key pool

Both commands print one ``ready`` line per KME (``ready KME_ID URL``) once listening, then
a status line every few seconds; tests and scripts can wait for the ``ready`` lines.
Listening is not having keys: the pools start empty and fill as the link runs, slower when
the machine is busy. With ``keys_ready=N`` (``--keys-ready N``) a ``keys ready`` line follows
once every pool of the process holds N free keys, so a script that is about to take keys can
wait for that line instead of racing the link's first blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from .defaults import (
    DEFAULT_HOST,
    DEFAULT_PORT_A,
    DEFAULT_PORT_B,
    DEFAULT_REDELIVERY_GRACE_S,
    KME_A,
    KME_B,
    SAE_A,
    SAE_B,
)
from .etsi import Limits
from .link import LinkMonitor, link_params, run_link_endpoint, run_pair_link
from .node import KmeNode, LocalPeer
from .peer import HttpPeer
from .pki import Pki, PkiSaeRegistry
from .pool import DEFAULT_BINDING_TTL_S, BindingLimits, KeyPool
from .relay_store import LocalKeyStore
from .served_saes import ServedSaes
from .server import start_server


@dataclass
class KmeSettings:
    data: Path
    host: str = DEFAULT_HOST
    plain_http: bool = False
    max_key_count: int = 100_000
    hostnames: Sequence[str] = ()
    link: bool = True
    link_options: dict[str, Any] = field(default_factory=dict)
    lanes: int = 1  # pair mode: blocks post-processed at once, one worker process each
    status_interval_s: float = 2.0
    limits: Limits = field(default_factory=Limits)
    keys_ready: int = 0  # print "keys ready" once every pool holds this many free keys (0: never)
    # A dec_keys answer stays re-servable to the same slave SAE this long (keysource.kme.pool).
    redelivery_grace_s: float = DEFAULT_REDELIVERY_GRACE_S
    # Quotas and lifetime of bound-but-unfetched keys (keysource.kme.pool.BindingLimits).
    binding_limits: BindingLimits | None = None  # None: the default shares of max_key_count

    def __post_init__(self) -> None:
        if not self.redelivery_grace_s >= 0:  # also refuses NaN
            raise ValueError("--redelivery-grace must be >= 0 seconds")
        if self.keys_ready < 0:
            raise ValueError("--keys-ready must be >= 0")
        if self.keys_ready > self.max_key_count:
            raise ValueError(f"--keys-ready {self.keys_ready} exceeds the pools' size "
                             f"(--max-keys {self.max_key_count}): it would never be printed")
        if self.keys_ready and not self.link:
            raise ValueError("--keys-ready needs the emulated link (--link none: keys put "
                             "into the pools by other means are not watched)")
        if self.link:
            link_params(**self.link_options)  # a bad --seed, --frame-bits...: refused up front
        if self.lanes != 1:
            from keysource.qkd.lanes import MAX_LANES

            if not 1 <= self.lanes <= MAX_LANES:
                raise ValueError(f"--lanes must be in [1, {MAX_LANES}] (got {self.lanes})")
            if not self.link:
                raise ValueError("--lanes needs the emulated link (--link none runs no blocks)")


def _say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()


def pool_path(data: Path, kme_id: str) -> Path:
    return data / kme_id / "pool.sqlite"


def _open_pool(settings: KmeSettings, kme_id: str) -> KeyPool:
    return KeyPool(pool_path(settings.data, kme_id), max_key_count=settings.max_key_count,
                   redelivery_grace_s=settings.redelivery_grace_s,
                   binding_limits=settings.binding_limits)


def _pair_kme_parts(settings: KmeSettings, pki: Pki, kme_id: str,
                    default_sae: str) -> dict[str, Any]:
    """The SAEs a KME of a pair serves and its own key store (keysource.kme.served_saes):
    keyword arguments of its KmeNode."""
    ttl = (settings.binding_limits.ttl_s if settings.binding_limits
           else DEFAULT_BINDING_TTL_S)
    served = ServedSaes(PkiSaeRegistry(pki), settings.data / kme_id / "saes-served.sqlite",
                        defaults=[default_sae])
    own_keys = LocalKeyStore(settings.data / kme_id / "own-keys.sqlite",
                             redelivery_grace_s=settings.redelivery_grace_s, ttl_s=ttl)
    return {"saes": served, "served": served, "own_keys": own_keys}


def _install_signal_handlers(stop: asyncio.Event) -> None:
    """Ctrl+C and SIGTERM end the run cleanly (pools closed, link stopped)."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may take signals; an embedding caller sets ``stop``
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        if sys.platform == "win32":  # the Windows event loop has no add_signal_handler
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
        else:
            loop.add_signal_handler(sig, stop.set)


def _make_psk() -> bytes:
    """The link's initial authentication secret, from the emulator (or 64 random bytes)."""
    try:
        from keysource.qkd import make_psk
    except ImportError:
        import os

        return os.urandom(64)
    return make_psk()


def curl_example(pki: Pki, url: str, sae: str, slave: str) -> str:
    paths = pki.sae(sae)
    return (
        f"curl --cacert {pki.ca_cert} --cert {paths.cert} --key {paths.key} "
        f"'{url}/api/v1/keys/{slave}/enc_keys?number=1'"
    )


async def _status_line(nodes: Sequence[KmeNode], monitor: LinkMonitor, started: float) -> str:
    levels = []
    for node in nodes:
        stats = await node.pool_stats()
        levels.append(f"{node.kme_id} {stats['stored']}/{stats['max_key_count']}")
    snap = monitor.snapshot()
    qber = snap["last_qber"]
    qber_text = f"{qber * 100:.2f}%" if qber is not None else "-"
    link = "up" if snap["connected"] else "down"
    return (
        f"[{time.strftime('%H:%M:%S')} +{time.monotonic() - started:.0f}s] "
        f"pool {' '.join(levels)} | link {link} | {snap['key_rate_per_s']:.1f} keys/s | "
        f"QBER {qber_text} | blocks {snap['blocks']} aborted {snap['aborted_blocks']}"
        + (f" (last: {snap['last_abort_reason']})" if snap["aborted_blocks"] else "")
        + (f" | LINK STOPPED: {snap['last_error']}" if snap["last_error"] else "")
    )


async def _every(interval_s: float, stop: asyncio.Event, out: TextIO,
                 line: Callable[[float], Awaitable[str]]) -> None:
    """Print ``await line(started)`` every ``interval_s`` until ``stop`` (0: never)."""
    started = time.monotonic()
    if interval_s <= 0:
        return
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        if not stop.is_set():
            _say(out, await line(started))


async def _status_loop(
    nodes: Sequence[KmeNode],
    monitor: LinkMonitor,
    stop: asyncio.Event,
    interval_s: float,
    out: TextIO,
) -> None:
    await _every(interval_s, stop, out, lambda started: _status_line(nodes, monitor, started))


async def _announce_keys(
    nodes: Sequence[KmeNode], wanted: int, stop: asyncio.Event, out: TextIO,
    labels: Sequence[str] | None = None,
) -> None:
    """Print ``keys ready ...`` once every pool in ``nodes`` holds ``wanted`` free keys.

    Woken by each link batch a pool stores (no polling); ends early when ``stop`` is set.
    """
    arrived = asyncio.Event()
    for node in nodes:
        node.on_keys_added.append(lambda _added: arrived.set())
    stopping = asyncio.create_task(stop.wait())
    try:
        while not stop.is_set():
            arrived.clear()  # before counting, so a batch stored meanwhile wakes us again
            free = [(await node.pool_stats())["free"] for node in nodes]
            if min(free) >= wanted:
                names = labels or [node.kme_id for node in nodes]
                held = " ".join(f"{name} {count}" for name, count in zip(names, free,
                                                                         strict=True))
                _say(out, f"keys ready: {held} free keys (wanted {wanted})")
                return
            waiting = asyncio.create_task(arrived.wait())
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
    finally:
        stopping.cancel()


async def _guard_link(coro: Any, monitor: LinkMonitor, out: TextIO) -> None:
    """Run the QKD link; if it fails, say why loudly and keep serving the keys already pooled."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        monitor.last_error = f"{type(exc).__name__}: {exc}"
        _say(out, f"error: the QKD link stopped ({monitor.last_error}); "
                  "the KMEs keep serving the keys already in their pools")


async def run_pair(
    settings: KmeSettings,
    *,
    port_a: int = DEFAULT_PORT_A,
    port_b: int = DEFAULT_PORT_B,
    stop: asyncio.Event | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Two KMEs and the QKD link between them, in this process, until SIGINT/SIGTERM."""
    stop = stop or asyncio.Event()
    _install_signal_handlers(stop)
    pki = Pki(settings.data / "pki")
    for created in pki.ensure(
        kme_ids=[KME_A, KME_B], sae_ids=[SAE_A, SAE_B], hostnames=settings.hostnames
    ):
        _say(out, f"created {created}")
    node_a = KmeNode(
        kme_id=KME_A, peer_kme_id=KME_B, allocator=True, limits=settings.limits,
        pool=_open_pool(settings, KME_A), **_pair_kme_parts(settings, pki, KME_A, SAE_A),
    )
    node_b = KmeNode(
        kme_id=KME_B, peer_kme_id=KME_A, allocator=False, limits=settings.limits,
        pool=_open_pool(settings, KME_B), **_pair_kme_parts(settings, pki, KME_B, SAE_B),
    )
    node_a.peer, node_b.peer = LocalPeer(node_b), LocalPeer(node_a)
    monitor = LinkMonitor()
    runners: list[web.AppRunner] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        urls = []
        for node, port in ((node_a, port_a), (node_b, port_b)):
            ctx = None if settings.plain_http else pki.server_context(node.kme_id)
            runner, bound = await start_server(
                node, host=settings.host, port=port, ssl_context=ctx,
                link_stats=monitor.snapshot,
            )
            runners.append(runner)
            scheme = "http" if settings.plain_http else "https"
            urls.append(f"{scheme}://{_url_host(settings.host)}:{bound}")
        if settings.plain_http:
            _say(out, "WARNING: plain HTTP without TLS: SAEs are identified by the X-SAE-ID "
                      "header, anybody on this machine can fetch keys. Loopback debugging only.")
        for node, url in zip((node_a, node_b), urls, strict=True):
            _say(out, f"ready {node.kme_id} {url}")
        if not settings.plain_http:
            _say(out, f"fetch a key for {SAE_A} -> {SAE_B}: "
                      + curl_example(pki, urls[0], SAE_A, SAE_B))
        tasks.append(asyncio.create_task(node_a.run_sync(stop)))
        tasks += [asyncio.create_task(node.run_sweeper(stop)) for node in (node_a, node_b)]
        tasks += [asyncio.create_task(node.run_own_keys_sweeper(stop))
                  for node in (node_a, node_b)]
        if settings.link:
            params = link_params(**settings.link_options)
            tasks.append(asyncio.create_task(
                _guard_link(run_pair_link(node_a, node_b, params, monitor, stop,
                                          lanes=settings.lanes), monitor, out)
            ))
            if settings.keys_ready:
                tasks.append(asyncio.create_task(
                    _announce_keys([node_a, node_b], settings.keys_ready, stop, out)))
        else:
            _say(out, "no QKD link (--link none): the pools serve only keys put there otherwise")
        tasks.append(asyncio.create_task(
            _status_loop([node_a, node_b], monitor, stop, settings.status_interval_s, out)
        ))
        await stop.wait()
    finally:
        stop.set()
        await _shutdown(tasks, runners)
        node_a.close()
        node_b.close()
    _say(out, "stopped")
    return 0


async def run_serve(
    settings: KmeSettings,
    *,
    role: str,
    kme_id: str,
    peer_kme_id: str,
    port: int,
    peer_url: str,
    link_host: str,
    link_port: int,
    stop: asyncio.Event | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """One KME of a two-process link: alice connects the link and allocates keys, bob listens."""
    if role not in ("alice", "bob"):
        raise ValueError("role must be alice or bob")
    stop = stop or asyncio.Event()
    _install_signal_handlers(stop)
    pki = Pki(settings.data / "pki")
    for created in pki.ensure(
        kme_ids=[kme_id, peer_kme_id], sae_ids=[SAE_A, SAE_B], hostnames=settings.hostnames,
        psk=_make_psk(),
    ):
        _say(out, f"created {created}")
    node = KmeNode(
        kme_id=kme_id, peer_kme_id=peer_kme_id, allocator=(role == "alice"),
        limits=settings.limits, pool=_open_pool(settings, kme_id),
        **_pair_kme_parts(settings, pki, kme_id, SAE_A if role == "alice" else SAE_B),
    )
    peer_ctx = None if settings.plain_http else pki.client_context(pki.kme(kme_id))
    peer = HttpPeer(peer_url, ssl_context=peer_ctx, own_kme_id=kme_id)
    node.peer = peer
    monitor = LinkMonitor()
    runners: list[web.AppRunner] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        ctx = None if settings.plain_http else pki.server_context(kme_id)
        runner, bound = await start_server(
            node, host=settings.host, port=port, ssl_context=ctx, link_stats=monitor.snapshot
        )
        runners.append(runner)
        if settings.plain_http:
            _say(out, "WARNING: plain HTTP without TLS (loopback debugging only)")
        scheme = "http" if settings.plain_http else "https"
        url = f"{scheme}://{_url_host(settings.host)}:{bound}"
        _say(out, f"ready {kme_id} {url} (peer {peer_kme_id} at {peer_url}, link {role} "
                  f"{'to' if role == 'alice' else 'on'} {link_host}:{link_port})")
        if node.allocator:
            tasks.append(asyncio.create_task(node.run_sync(stop)))
        tasks.append(asyncio.create_task(node.run_sweeper(stop)))
        tasks.append(asyncio.create_task(node.run_own_keys_sweeper(stop)))
        if settings.link:
            params = link_params(**settings.link_options)
            tasks.append(asyncio.create_task(_guard_link(run_link_endpoint(
                node, role=role, host=link_host, port=link_port, params=params,
                psk=pki.read_psk(), auth_store=settings.data / kme_id / "link-auth.state",
                monitor=monitor, stop=stop,
                on_listening=lambda p: _say(out, f"link listening on {link_host}:{p}"),
            ), monitor, out)))
            if settings.keys_ready:
                tasks.append(asyncio.create_task(
                    _announce_keys([node], settings.keys_ready, stop, out)))
        tasks.append(asyncio.create_task(
            _status_loop([node], monitor, stop, settings.status_interval_s, out)
        ))
        await stop.wait()
    finally:
        stop.set()
        await _shutdown(tasks, runners)
        await peer.aclose()
        node.close()
    _say(out, "stopped")
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _shutdown(tasks: list[asyncio.Task[None]], runners: list[web.AppRunner]) -> None:
    for runner in runners:
        await runner.cleanup()
    done, pending = await asyncio.wait(tasks, timeout=5) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def fetch_stats(url: str, *, ca: Path | None, cert: Path | None, key: Path | None,
                sae_id: str | None) -> dict[str, Any]:
    """GET /kme/v1/stats from a running KME (used by ``qsecret kme status``)."""
    from .http11 import AsyncHttpClient, PrivateLoop, Response
    from .pki import client_ssl_context

    headers = {}
    ssl_context = None
    if url.startswith("https://"):
        if not (ca and cert and key):
            raise ValueError("https needs --ca, --cert and --key (or --data and --sae)")
        ssl_context = client_ssl_context(ca=ca, cert=cert, key=key)
    elif sae_id:
        headers["X-SAE-ID"] = sae_id
    http = AsyncHttpClient(url.rstrip("/"), ssl_context=ssl_context, headers=headers,
                           timeout=5.0)

    async def get() -> Response:
        try:
            return await http.request("GET", "/kme/v1/stats")
        finally:
            await http.aclose()

    loop = PrivateLoop()
    try:
        resp = loop.run(get())  # HttpError when the KME cannot be reached
    finally:
        loop.close()
    if resp.status_code != 200:
        raise ValueError(f"{resp.status_code}: {resp.text[:200]}")
    body: dict[str, Any] = resp.json()
    return body


def format_stats(stats: dict[str, Any]) -> str:
    pool, link = stats["pool"], stats["link"]
    qber = link.get("last_qber")
    return (
        f"{pool['KME_ID']} ({pool['role']}, peer {pool['peer_KME_ID']}): "
        f"pool {pool['stored']}/{pool['max_key_count']} (free {pool['free']}, "
        f"bound {pool['bound_master'] + pool['bound_slave']}, delivered {pool['delivered']}, "
        f"re-servable {pool.get('redeliverable', 0)}) | "
        f"link {'up' if link.get('connected') else 'down'} | "
        f"{link.get('key_rate_per_s', 0):.1f} keys/s | "
        f"QBER {'-' if qber is None else f'{qber * 100:.2f}%'} | "
        f"blocks {link.get('blocks', 0)} aborted {link.get('aborted_blocks', 0)}"
    )


def dump_json(stats: dict[str, Any]) -> str:
    return json.dumps(stats, indent=2)

