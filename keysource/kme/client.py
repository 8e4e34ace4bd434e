"""ETSI GS QKD 014 SAE client (mutual TLS), asynchronous and blocking, on :mod:`.http11`.

``AsyncSaeClient`` (the messenger's) is the implementation; ``SaeClient`` (tools, tests, the
CLI) runs it on a private event loop. Both are safe under concurrent calls and cancellation,
and keep the keys of a cancelled ``enc_keys``/``dec_keys`` for the next caller (see
:class:`AsyncSaeClient` for the exact guarantee).

    with SaeClient("https://127.0.0.1:8441", ca=..., cert=..., key=...) as kme:
        status = kme.get_status("sae-bob")
        keys = kme.get_enc_keys("sae-bob", number=2)          # at the master's KME
    with SaeClient("https://127.0.0.1:8442", ...) as kme:
        same = kme.get_dec_keys("sae-alice", [k.key_ID for k in keys])   # at the slave's KME

Every failure raises a subclass of :class:`KmeError` carrying the ETSI ``message`` and
``details``: :class:`KmeBadRequest` (400), :class:`KmeUnauthorized` (401),
:class:`KmeUnavailable` (503: not enough keys, peer unreachable - worth retrying later),
:class:`KmeConnectionError` (TLS refusal, connection refused, timeout) and
:class:`KmeProtocolError` (the answer does not follow ETSI 014).
"""

from __future__ import annotations

import base64
import binascii
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .http11 import AsyncHttpClient, HttpError, PrivateLoop, Response
from .key_path import BadKeyPath, path_of
from .sae_id import InvalidSaeId, sae_id_path_segment
from .tls import client_ssl_context

log = logging.getLogger(__name__)


class KmeError(Exception):
    """The KME refused or could not serve a request."""

    def __init__(
        self, message: str, *, status: int | None = None, details: list[Any] | None = None
    ) -> None:
        super().__init__(message if status is None else f"{status}: {message}")
        self.message = message
        self.status = status
        self.details = details or []


class KmeBadRequest(KmeError):
    """400: malformed request, bad size, too many keys, unknown key_ID, unknown extension."""


class KmeUnauthorized(KmeError):
    """401: no or wrong client certificate, or a key_ID addressed to another SAE."""


class KmeUnavailable(KmeError):
    """503: not enough keys in the pool (yet) or the peer KME is unreachable."""


class KmeConnectionError(KmeError):
    """The KME could not be reached, or refused the TLS handshake."""


class KmeProtocolError(KmeError):
    """The KME answered something that is not ETSI GS QKD 014."""


_BY_STATUS: dict[int, type[KmeError]] = {
    400: KmeBadRequest,
    401: KmeUnauthorized,
    503: KmeUnavailable,
}


@dataclass(frozen=True)
class KeyStatus:
    """The ETSI 014 Status data format."""

    source_KME_ID: str
    target_KME_ID: str
    master_SAE_ID: str
    slave_SAE_ID: str
    key_size: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int
    max_SAE_ID_count: int


@dataclass(frozen=True)
class QkdKey:
    """A key from the KME: its key_ID and bytes (the bytes never appear in repr), and the
    KMEs it went through, the master's first, when the KME says (:mod:`.key_path`)."""

    key_ID: str
    key: bytes
    path: tuple[str, ...] = field(default=(), compare=False)

    def __repr__(self) -> str:
        return f"QkdKey(key_ID={self.key_ID!r}, {len(self.key) * 8} bits)"


def _raise_for(resp: Response) -> None:
    if resp.status_code == 200:
        return
    message, details = resp.reason_phrase or "error", []
    try:
        body = resp.json()
        if isinstance(body, dict):
            message = str(body.get("message", message))
            details = body.get("details") or []
    except ValueError:
        pass
    cls = _BY_STATUS.get(resp.status_code, KmeProtocolError)
    raise cls(message, status=resp.status_code, details=details)


def _json(resp: Response) -> dict[str, Any]:
    _raise_for(resp)
    try:
        body = resp.json()
    except ValueError:
        raise KmeProtocolError("the KME's answer is not JSON", status=resp.status_code) from None
    if not isinstance(body, dict):
        raise KmeProtocolError("the KME's answer is not a JSON object", status=resp.status_code)
    return body


def parse_status(body: dict[str, Any]) -> KeyStatus:
    try:
        return KeyStatus(**{f: body[f] for f in KeyStatus.__dataclass_fields__})
    except KeyError as exc:
        raise KmeProtocolError(f"status answer lacks {exc.args[0]}") from None


def parse_keys(body: dict[str, Any], *, expect: int | None = None) -> list[QkdKey]:
    raw = body.get("keys")
    if not isinstance(raw, list):
        raise KmeProtocolError("key answer lacks a 'keys' array")
    out = []
    for item in raw:
        try:
            key = QkdKey(str(item["key_ID"]), base64.b64decode(item["key"], validate=True))
        except (KeyError, TypeError, binascii.Error):
            raise KmeProtocolError("malformed entry in 'keys'") from None
        try:  # an optional extension: a bad one costs the path, never the key
            out.append(replace(key, path=path_of(item)))
        except BadKeyPath as exc:
            log.warning("key %s: path ignored, %s", key.key_ID, exc)
            out.append(key)
    if expect is not None and len(out) != expect:
        raise KmeProtocolError(f"asked for {expect} keys, got {len(out)}")
    return out


def _enc_body(number: int, size: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"number": number}
    if size is not None:
        body["size"] = size
    return body


def _dec_body(key_ids: Sequence[str]) -> dict[str, Any]:
    return {"key_IDs": [{"key_ID": k} for k in key_ids]}


def _http_client(
    base_url: str,
    ca: str | Path | None,
    cert: str | Path | None,
    key: str | Path | None,
    sae_id: str | None,
    timeout_s: float,
) -> AsyncHttpClient:
    headers = {}
    ssl_context: ssl.SSLContext | None = None
    if base_url.startswith("https://"):
        if not (ca and cert and key):
            raise ValueError("https needs ca, cert and key (the SAE's client certificate)")
        ssl_context = client_ssl_context(ca=ca, cert=cert, key=key)
    else:
        if not sae_id:
            raise ValueError("plain http (loopback debugging) needs sae_id")
        headers["X-SAE-ID"] = sae_id
    return AsyncHttpClient(base_url.rstrip("/"), ssl_context=ssl_context, headers=headers,
                           timeout=timeout_s)


def _path_segment(sae_id: str, what: str) -> str:
    """An SAE_ID for a URL path: checked by the KME's own rule and percent-encoded, so a
    value from a peer's bundle can never change which path is asked for."""
    try:
        return sae_id_path_segment(sae_id, what)
    except InvalidSaeId as exc:
        raise KmeBadRequest(f"not sent to the KME: {exc}") from None


def _connection_error(exc: HttpError) -> KmeConnectionError:
    return KmeConnectionError(f"cannot reach the KME: {exc}")


class _HeldKey:
    """A key the KME handed out that no caller has taken yet; its bytes are wiped on release."""

    __slots__ = ("key_ID", "path", "_material")

    def __init__(self, key: QkdKey) -> None:
        self.key_ID = key.key_ID
        self.path = key.path
        self._material = bytearray(key.key)

    def release(self) -> QkdKey:
        """The key for a caller; the reserve's copy is zeroed."""
        key = QkdKey(self.key_ID, bytes(self._material), self.path)
        self.wipe()
        return key

    def wipe(self) -> None:
        self._material[:] = bytes(len(self._material))
        self._material.clear()


class KeyReserve:
    """Keys answered to cancelled callers, kept in memory for the next caller who asks.

    ``enc_keys`` keys wait per (slave SAE, size) and go to the next ``enc_keys`` for that
    slave and size (any key bound to the pair serves: the slave fetches it by key_ID);
    ``dec_keys`` keys wait per (master SAE, key_ID) for a retry naming that key_ID. At most
    ``limit`` keys per kind; beyond that the oldest is wiped and lost (logged), which takes
    more cancelled requests in flight than a client ever has (see :mod:`.http11`).
    """

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._enc: dict[tuple[str, int | None], list[_HeldKey]] = {}
        self._dec: dict[tuple[str, str], _HeldKey] = {}

    def enc_count(self, slave_sae_id: str, size: int | None = None) -> int:
        return len(self._enc.get((slave_sae_id, size), ()))

    def dec_count(self) -> int:
        return len(self._dec)

    def keep_enc(self, slave_sae_id: str, size: int | None, keys: Sequence[QkdKey]) -> None:
        queue = self._enc.setdefault((slave_sae_id, size), [])
        queue.extend(_HeldKey(k) for k in keys)
        self._trim_enc()

    def take_enc(self, slave_sae_id: str, size: int | None, number: int) -> list[QkdKey]:
        """Up to ``number`` kept keys for this slave and size, oldest first."""
        queue = self._enc.get((slave_sae_id, size))
        if not queue:
            return []
        taken, queue[:number] = queue[:number], []
        if not queue:
            del self._enc[(slave_sae_id, size)]
        return [held.release() for held in taken]

    def return_enc(self, slave_sae_id: str, size: int | None, keys: Sequence[QkdKey]) -> None:
        """Keys taken by a caller that then failed: first in line again."""
        if keys:
            queue = self._enc.setdefault((slave_sae_id, size), [])
            queue[:0] = [_HeldKey(k) for k in keys]
            self._trim_enc()

    def keep_dec(self, master_sae_id: str, keys: Sequence[QkdKey]) -> None:
        for key in keys:
            self._dec[(master_sae_id, key.key_ID.lower())] = _HeldKey(key)
        while len(self._dec) > self.limit:
            oldest = next(iter(self._dec))
            self._dec.pop(oldest).wipe()
            log.warning("dec_keys reserve full: key %s of %s lost", oldest[1], oldest[0])

    def take_dec(self, master_sae_id: str, key_ids: Sequence[str]) -> dict[str, QkdKey]:
        """The kept keys among ``key_ids`` (by requested key_ID), removed from the reserve."""
        found = {}
        for key_id in key_ids:
            held = self._dec.pop((master_sae_id, key_id.lower()), None)
            if held is not None:
                found[key_id] = held.release()
        return found

    def wipe(self) -> None:
        for queue in self._enc.values():
            for held in queue:
                held.wipe()
        for held in self._dec.values():
            held.wipe()
        self._enc.clear()
        self._dec.clear()

    def _trim_enc(self) -> None:
        while sum(len(q) for q in self._enc.values()) > self.limit:
            pair, queue = next((p, q) for p, q in self._enc.items() if q)
            queue.pop(0).wipe()
            if not queue:
                del self._enc[pair]
            log.warning("enc_keys reserve full: a key for %s lost", pair[0])


class AsyncSaeClient:
    """ETSI 014 client for asyncio code (the messenger's workers); the one implementation.

    Safe to call concurrently (up to four requests on the wire at once, see :mod:`.http11`)
    and to cancel at any point. The guarantee for keys, because the KME deletes a key when
    it hands it out: once an ``enc_keys``/``dec_keys`` request is on the wire, its answer is
    read even if the caller is cancelled, and the keys of a 200 answer nobody took wait in
    :attr:`reserve` (in memory, bounded; its bytearray copies are zeroed when taken or on
:meth:`aclose` - the ``bytes`` a caller receives are beyond Python's reach to wipe):

    - ``get_enc_keys(slave, number, size)`` first takes kept keys for that slave and size,
      and asks the KME only for the rest;
    - ``get_dec_keys(master, key_ids)`` takes kept keys among ``key_ids`` and asks the KME
      only for the others, so a retry of a cancelled call gets the same keys.

    Keys taken from the reserve by a call that then fails or is cancelled go back into it.
    Not covered: answers lost on the wire or to a timeout (the KME may have handed the keys
    out; nobody can tell), keys kept when the client closes, and more than
    ``reserve.limit`` keys of one kind waiting at once.
    """

    def __init__(
        self,
        base_url: str,
        *,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        sae_id: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._http = _http_client(base_url, ca, cert, key, sae_id, timeout_s)
        self.reserve = KeyReserve()

    async def drain(self) -> None:
        """Wait for every request in flight, also those of cancelled callers (whose keys
        are then in :attr:`reserve`)."""
        await self._http.drain()

    async def aclose(self) -> None:
        """Wait for requests in flight (within their deadline), close the connections and
        wipe the reserve."""
        try:
            await self._http.aclose()
        finally:
            self.reserve.wipe()

    async def __aenter__(self) -> AsyncSaeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, json: Any = None,
                       on_orphan: Callable[[Response], None] | None = None) -> dict[str, Any]:
        try:
            return _json(await self._http.request(method, path, json_body=json,
                                                  on_orphan=on_orphan))
        except HttpError as exc:
            raise _connection_error(exc) from None

    async def get_status(self, slave_sae_id: str) -> KeyStatus:
        slave = _path_segment(slave_sae_id, "slave_SAE_ID")
        return parse_status(await self._request("GET", f"/api/v1/keys/{slave}/status"))

    async def get_enc_keys(
        self, slave_sae_id: str, number: int = 1, size: int | None = None
    ) -> list[QkdKey]:
        slave = _path_segment(slave_sae_id, "slave_SAE_ID")
        kept = self.reserve.take_enc(slave_sae_id, size, number)
        missing = number - len(kept)
        if not missing:
            return kept

        def orphaned(resp: Response) -> None:
            keys = _orphan_keys(resp, missing)
            if keys:
                self.reserve.keep_enc(slave_sae_id, size, keys)

        try:
            body = await self._request("POST", f"/api/v1/keys/{slave}/enc_keys",
                                       json=_enc_body(missing, size), on_orphan=orphaned)
            fresh = parse_keys(body, expect=missing)
        except BaseException:
            self.reserve.return_enc(slave_sae_id, size, kept)
            raise
        return kept + fresh

    async def get_dec_keys(self, master_sae_id: str, key_ids: Sequence[str]) -> list[QkdKey]:
        master = _path_segment(master_sae_id, "master_SAE_ID")
        kept = self.reserve.take_dec(master_sae_id, key_ids)
        rest = [k for k in key_ids if k not in kept]
        fresh: list[QkdKey] = []
        if rest:
            def orphaned(resp: Response) -> None:
                keys = _orphan_keys(resp, len(rest))
                if keys:
                    self.reserve.keep_dec(master_sae_id, keys)

            try:
                body = await self._request("POST", f"/api/v1/keys/{master}/dec_keys",
                                           json=_dec_body(rest), on_orphan=orphaned)
                fresh = parse_keys(body, expect=len(rest))
            except BaseException:
                self.reserve.keep_dec(master_sae_id, list(kept.values()))
                raise
        answered = iter(fresh)  # the KME answers in the order asked
        return [kept[k] if k in kept else next(answered) for k in key_ids]

    async def get_stats(self) -> dict[str, Any]:
        """Pool and link figures (``GET /kme/v1/stats``: levels, key rate, QBER; no keys)."""
        return await self._request("GET", "/kme/v1/stats")


def _orphan_keys(resp: Response, expect: int) -> list[QkdKey]:
    """The keys in an answer nobody waits for any more ([] for a refusal)."""
    if resp.status_code != 200:
        return []
    try:
        return parse_keys(_json(resp), expect=expect)
    except KmeError as exc:
        log.warning("a cancelled request's key answer was unusable: %s", exc)
        return []


class SaeClient:
    """Blocking ETSI 014 client (tools, tests, the CLI): :class:`AsyncSaeClient` run on a
    private event loop, so both share one implementation."""

    def __init__(
        self,
        base_url: str,
        *,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        sae_id: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._async = AsyncSaeClient(base_url, ca=ca, cert=cert, key=key, sae_id=sae_id,
                                     timeout_s=timeout_s)
        self._loop = PrivateLoop()

    def close(self) -> None:
        try:
            self._loop.run(self._async.aclose())
        finally:
            self._loop.close()

    def __enter__(self) -> SaeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_status(self, slave_sae_id: str) -> KeyStatus:
        return self._loop.run(self._async.get_status(slave_sae_id))

    def get_enc_keys(
        self, slave_sae_id: str, number: int = 1, size: int | None = None
    ) -> list[QkdKey]:
        return self._loop.run(self._async.get_enc_keys(slave_sae_id, number, size))

    def get_dec_keys(self, master_sae_id: str, key_ids: Sequence[str]) -> list[QkdKey]:
        return self._loop.run(self._async.get_dec_keys(master_sae_id, key_ids))

    def get_stats(self) -> dict[str, Any]:
        return self._loop.run(self._async.get_stats())
