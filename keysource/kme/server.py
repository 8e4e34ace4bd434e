"""The ETSI GS QKD 014 REST server (aiohttp) with mutual TLS, plus the KME-to-KME routes.

aiohttp is used because it hands each handler the verified peer certificate
(``request.transport.get_extra_info("peercert")``): the SAE_ID is read from there, never
from the request. Routes:

ETSI GS QKD 014 v1.1.1 (SAE certificates, OU=SAE):
    GET       /api/v1/keys/{slave_SAE_ID}/status
    GET|POST  /api/v1/keys/{slave_SAE_ID}/enc_keys
    GET|POST  /api/v1/keys/{master_SAE_ID}/dec_keys
KME-to-KME (only the peer KME's certificate, OU=KME, CN=peer KME_ID):
    POST      /kme/v1/bindings     the allocator pushes a binding to the follower
    POST      /kme/v1/allocate     the follower asks the allocator to bind keys
    POST      /kme/v1/cancel       the allocator gives up a binding the follower cannot hold
    GET       /kme/v1/saes/{SAE_ID}  is this SAE registered at this KME? (before binding keys)
    POST      /kme/v1/served       an SAE now calls the peer KME: this one stops serving it
    POST      /kme/v1/relay        a network neighbour relays keys (keysource.kme.network_node)
Monitoring (any certificate from the CA; no key material):
    GET       /kme/v1/stats

Errors are ``{"message": ..., "details": [...]}`` with 400, 401, 404, 405, 409 or 503. An
enc_keys for a slave SAE registered neither here nor at the peer KME is a 400 naming it; one
over a quota of bound-but-unfetched keys is a 503 whose details name the quota
(:class:`keysource.kme.pool.QuotaExceeded`).
The plain-HTTP mode (``ssl_context=None``) exists for loopback debugging only: identities
then come from the ``X-SAE-ID`` / ``X-KME-ID`` headers, so it refuses any other address.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from . import etsi
from .key_path import key_extension
from .node import KmeNode, UnknownSae
from .pki import ROLE_KME, ROLE_SAE, PeerIdentity, identity_from_peercert
from .pool import Binding, BindingConflict, PoolExhausted, PoolKey, QuotaExceeded
from .sae_id import RESERVED_SAE_PREFIX, is_valid_sae_id

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024


class KmeService(Protocol):
    """What the server serves: a KME of a pair (:class:`KmeNode`) or of a network
    (:class:`keysource.kme.network_node.NetworkNode`)."""

    kme_id: str
    limits: etsi.Limits

    async def status(self, master: str, slave: str) -> dict[str, Any]: ...

    async def enc_keys(self, master: str, slave: str,
                       request: etsi.EncKeysRequest) -> list[PoolKey]: ...

    async def dec_keys(self, master: str, slave: str, key_ids: Sequence[str]
                       ) -> list[PoolKey]: ...

    def link_for(self, kme_id: str) -> KmeNode | None: ...

    def handle_knows_sae(self, sae_id: str) -> bool: ...

    async def called_by(self, sae_id: str) -> None:
        """An authenticated SAE called (a KME of a pair serves it from now on)."""
        ...

    def handle_peer_serves(self, sae_id: str) -> bool:
        """The peer KME serves ``sae_id`` now; True if this KME served it until now."""
        ...

    async def pool_stats(self) -> dict[str, Any]: ...


RelayHandler = Callable[[str, Mapping[str, Any]], Awaitable[dict[str, Any]]]
NODE_KEY: web.AppKey[KmeService] = web.AppKey("node", KmeService)  # type: ignore[type-abstract]
RELAY_KEY: web.AppKey[RelayHandler | None] = web.AppKey("relay", object)  # type: ignore[arg-type]
PLAIN_KEY: web.AppKey[bool] = web.AppKey("plain", bool)
STATS_KEY: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("stats", Callable)


class NotLoopback(ValueError):
    """Plain HTTP was asked for on an address other than loopback."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error(status: int, message: str, details: list[dict[str, Any]] | None = None) -> web.Response:
    body: dict[str, Any] = {"message": message}
    if details:
        body["details"] = details
    return web.json_response(body, status=status)


@web.middleware
async def _errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except etsi.EtsiError as exc:
        return web.json_response(exc.body(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return _error(500, "internal error in the KME")


def _identity(request: web.Request) -> PeerIdentity | None:
    if request.app[PLAIN_KEY]:
        if sae := request.headers.get("X-SAE-ID"):
            return PeerIdentity(ROLE_SAE, sae) if is_valid_sae_id(sae) else None
        if kme := request.headers.get("X-KME-ID"):
            return PeerIdentity(ROLE_KME, kme) if is_valid_sae_id(kme) else None
        return None
    transport = request.transport
    if transport is None:
        return None
    return identity_from_peercert(transport.get_extra_info("peercert"))


def _sae(request: web.Request) -> str:
    who = _identity(request)
    if who is None:
        raise etsi.Unauthorized(
            "a client certificate issued by this KME's CA is required (OU=SAE, CN=SAE_ID)"
        )
    if who.role != ROLE_SAE:
        raise etsi.Unauthorized("this certificate does not identify an SAE")
    if who.name.startswith(RESERVED_SAE_PREFIX):
        raise etsi.Unauthorized(f"SAE_IDs starting {RESERVED_SAE_PREFIX!r} are reserved for "
                                "the KMEs' key relay")
    return who.name


def _peer_kme(request: web.Request) -> KmeNode:
    """The link whose peer KME presented its certificate (401 for anybody else)."""
    who = _identity(request)
    link = request.app[NODE_KEY].link_for(who.name) if who and who.role == ROLE_KME else None
    if link is None:
        raise etsi.Unauthorized("only a peer KME of this KME may call this route")
    return link


def _peer_kme_id(request: web.Request) -> str:
    who = _identity(request)
    assert who is not None  # _peer_kme checked it
    return who.name


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise etsi.BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise etsi.BadRequest("request body must be a JSON object")
    return body


def _keys_response(keys: list[PoolKey]) -> web.Response:
    """The ETSI 014 Key container; each key names the KMEs it went through (key_path)."""
    entries = []
    for k in keys:
        entry: dict[str, Any] = {"key_ID": k.key_ID, "key": base64.b64encode(k.key).decode()}
        if (extension := key_extension(k.path)) is not None:
            entry["key_extension"] = extension
        entries.append(entry)
    return web.json_response({"keys": entries})


async def status(request: web.Request) -> web.Response:
    master = _sae(request)
    slave = etsi.check_sae_id(request.match_info["slave"], what="slave_SAE_ID")
    return web.json_response(await request.app[NODE_KEY].status(master, slave))


async def enc_keys(request: web.Request) -> web.Response:
    master = _sae(request)
    slave = etsi.check_sae_id(request.match_info["slave"], what="slave_SAE_ID")
    node = request.app[NODE_KEY]
    if request.method == "POST":
        body = await _json_body(request)
    else:
        body = {k: request.query.getone(k) for k in request.query}
    parsed = etsi.parse_enc_keys(body, node.limits)
    return _keys_response(await node.enc_keys(master, slave, parsed))


async def dec_keys(request: web.Request) -> web.Response:
    slave = _sae(request)
    master = etsi.check_sae_id(request.match_info["master"], what="master_SAE_ID")
    node = request.app[NODE_KEY]
    if request.method == "POST":
        body = await _json_body(request)
    else:
        unknown = sorted(set(request.query) - {"key_ID"})
        if unknown:
            raise etsi.BadRequest("unknown query parameters", [{"unknown_fields": unknown}])
        body = {"key_IDs": [{"key_ID": v} for v in request.query.getall("key_ID", [])]}
    parsed = etsi.parse_dec_keys(body, node.limits)
    return _keys_response(await node.dec_keys(master, slave, parsed.key_IDs))


async def peer_bindings(request: web.Request) -> web.Response:
    node = _peer_kme(request)
    try:
        binding = Binding.from_json(await _json_body(request))
    except ValueError as exc:
        raise etsi.BadRequest(str(exc)) from None
    try:
        missing = await node.handle_push(binding)
    except QuotaExceeded as exc:
        return web.json_response({"message": str(exc), "quota": exc.to_json()}, status=503)
    except BindingConflict as exc:
        log.error("binding %s conflicts with this pool: %s", binding.binding_id, exc)
        return _error(409, str(exc))
    return web.json_response({"missing": missing})


async def peer_allocate(request: web.Request) -> web.Response:
    node = _peer_kme(request)
    body = await _json_body(request)
    try:
        binding_id = str(body["binding_id"])
        master = etsi.check_sae_id(str(body["master_SAE_ID"]), what="master_SAE_ID")
        slave = etsi.check_sae_id(str(body["slave_SAE_ID"]), what="slave_SAE_ID")
        sizes = [int(s) for s in body["sizes"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise etsi.BadRequest(f"malformed allocate request: {exc!r}") from None
    try:
        binding = await node.handle_allocate(
            binding_id=binding_id, master=master, slave=slave, sizes=sizes
        )
    except PoolExhausted as exc:
        return web.json_response(
            {"message": "not enough keys", "needed": exc.needed, "available": exc.available},
            status=503,
        )
    except QuotaExceeded as exc:
        return web.json_response({"message": str(exc), "quota": exc.to_json()}, status=503)
    except UnknownSae as exc:
        return web.json_response(
            {"message": str(exc), "unknown_SAE_ID": exc.sae_id, "KME_ID": node.kme_id}, status=400)
    except BindingConflict as exc:
        return _error(409, str(exc))
    return web.json_response(binding.to_json())


async def peer_saes(request: web.Request) -> web.Response:
    """The peer KME asks whether an SAE is registered here before binding keys to it."""
    _peer_kme(request)
    sae_id = etsi.check_sae_id(request.match_info["sae"], what="SAE_ID")
    return web.json_response(
        {"SAE_ID": sae_id, "registered": request.app[NODE_KEY].handle_knows_sae(sae_id)})


async def peer_served(request: web.Request) -> web.Response:
    """The peer KME serves this SAE now (it called there): this KME stops serving it."""
    _peer_kme(request)
    body = await _json_body(request)
    value = body.get("SAE_ID")
    if not isinstance(value, str):
        raise etsi.BadRequest("SAE_ID must be a string")
    sae_id = etsi.check_sae_id(value, what="SAE_ID")
    moved = request.app[NODE_KEY].handle_peer_serves(sae_id)
    return web.json_response({"SAE_ID": sae_id, "moved": moved})


async def peer_cancel(request: web.Request) -> web.Response:
    node = _peer_kme(request)
    body = await _json_body(request)
    try:
        binding_id = normalise_binding_id(body.get("binding_id"))
        cancelled = await node.handle_cancel(binding_id)
    except BindingConflict as exc:
        return _error(409, str(exc))
    return web.json_response({"result": "cancelled" if cancelled else "applied"})


async def peer_relay(request: web.Request) -> web.Response:
    """A neighbour relays keys through (or to) this node; refusals are 400 with a reason."""
    from keysource.network.key_relay import RelayRefused

    from .network_node import RelayFailed

    _peer_kme(request)
    handler = request.app[RELAY_KEY]
    if handler is None:
        return _error(404, "this KME relays no keys (it is not a node of a network)")
    body = await _json_body(request)
    try:
        return web.json_response(await handler(_peer_kme_id(request), body))
    except RelayRefused as exc:
        return web.json_response({"message": str(exc), "refused": exc.reason}, status=400)
    except RelayFailed as exc:
        return web.json_response({"message": str(exc), "link": exc.link}, status=503)


def normalise_binding_id(value: object) -> str:
    if not isinstance(value, str):
        raise etsi.BadRequest("binding_id must be a UUID string")
    return etsi.normalise_key_id(value)


async def stats(request: web.Request) -> web.Response:
    who = _identity(request)
    if who is None:
        raise etsi.Unauthorized("a client certificate issued by this KME's CA is required")
    node = request.app[NODE_KEY]
    if who.role == ROLE_SAE and not who.name.startswith(
            RESERVED_SAE_PREFIX):
        await node.called_by(who.name)  # the key panel's poll places an SAE before its first key
    body = {"pool": await node.pool_stats(), "link": request.app[STATS_KEY]()}
    return web.json_response(body)


def make_app(
    node: KmeService,
    *,
    plain: bool = False,
    link_stats: Callable[[], dict[str, Any]] | None = None,
    relay: RelayHandler | None = None,
) -> web.Application:
    app = web.Application(middlewares=[_errors_as_json], client_max_size=MAX_BODY_BYTES)
    app[NODE_KEY] = node
    app[RELAY_KEY] = relay
    app[PLAIN_KEY] = plain
    app[STATS_KEY] = link_stats or dict
    app.router.add_get("/api/v1/keys/{slave}/status", status)
    app.router.add_route("GET", "/api/v1/keys/{slave}/enc_keys", enc_keys)
    app.router.add_route("POST", "/api/v1/keys/{slave}/enc_keys", enc_keys)
    app.router.add_route("GET", "/api/v1/keys/{master}/dec_keys", dec_keys)
    app.router.add_route("POST", "/api/v1/keys/{master}/dec_keys", dec_keys)
    app.router.add_post("/kme/v1/bindings", peer_bindings)
    app.router.add_post("/kme/v1/allocate", peer_allocate)
    app.router.add_post("/kme/v1/cancel", peer_cancel)
    app.router.add_get("/kme/v1/saes/{sae}", peer_saes)
    app.router.add_post("/kme/v1/served", peer_served)
    app.router.add_post("/kme/v1/relay", peer_relay)
    app.router.add_get("/kme/v1/stats", stats)
    return app


async def start_server(
    node: KmeService,
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    link_stats: Callable[[], dict[str, Any]] | None = None,
    relay: RelayHandler | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve ``node`` on host:port (0 = any free port); return the runner and the bound port."""
    plain = ssl_context is None
    if plain and not is_loopback(host):
        raise NotLoopback(
            f"plain HTTP is for loopback only; refusing to listen on {host} (use TLS)"
        )
    app = make_app(node, plain=plain, link_stats=link_stats, relay=relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    server = site._server  # the asyncio Server: its socket gives the real port for port 0
    bound = port
    if server is not None and getattr(server, "sockets", None):
        bound = server.sockets[0].getsockname()[1]
    return runner, bound
