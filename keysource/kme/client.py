"""ETSI GS QKD 014 SAE client (mutual TLS), synchronous and asynchronous.

``SaeClient`` (blocking, for tools and tests) runs on httpx; ``AsyncSaeClient`` (the
messenger's) on the small h11 client of :mod:`.http11`, which every messenger start loads
about 60 ms faster than httpx (see there).

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
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .http11 import AsyncHttpClient, HttpError
from .tls import client_ssl_context


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
    """A key from the KME: its key_ID and bytes (the bytes never appear in repr)."""

    key_ID: str
    key: bytes

    def __repr__(self) -> str:
        return f"QkdKey(key_ID={self.key_ID!r}, {len(self.key) * 8} bits)"


class _Answer(Protocol):
    """What both HTTP clients' responses offer."""

    @property
    def status_code(self) -> int: ...

    @property
    def reason_phrase(self) -> str: ...

    def json(self) -> Any: ...


def _raise_for(resp: _Answer) -> None:
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


def _json(resp: _Answer) -> dict[str, Any]:
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
            out.append(QkdKey(str(item["key_ID"]), base64.b64decode(item["key"], validate=True)))
        except (KeyError, TypeError, binascii.Error):
            raise KmeProtocolError("malformed entry in 'keys'") from None
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


def _client_args(
    base_url: str,
    ca: str | Path | None,
    cert: str | Path | None,
    key: str | Path | None,
    sae_id: str | None,
    timeout_s: float,
) -> dict[str, Any]:
    headers = {}
    verify: ssl.SSLContext | bool
    if base_url.startswith("https://"):
        if not (ca and cert and key):
            raise ValueError("https needs ca, cert and key (the SAE's client certificate)")
        verify = client_ssl_context(ca=ca, cert=cert, key=key)
    else:
        if not sae_id:
            raise ValueError("plain http (loopback debugging) needs sae_id")
        headers["X-SAE-ID"] = sae_id
        verify = False
    return {
        "base_url": base_url.rstrip("/"),
        "verify": verify,
        "timeout": timeout_s,
        "headers": headers,
    }


def _connection_error(exc: Exception) -> KmeConnectionError:
    what = str(exc) if isinstance(exc, HttpError) else f"{type(exc).__name__}: {exc}"
    return KmeConnectionError(f"cannot reach the KME: {what}")


class SaeClient:
    """Blocking ETSI 014 client for one SAE talking to its own KME."""

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
        import httpx

        self._http = httpx.Client(**_client_args(base_url, ca, cert, key, sae_id, timeout_s))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SaeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import httpx

        try:
            return _json(self._http.request(method, path, **kwargs))
        except httpx.HTTPError as exc:
            raise _connection_error(exc) from None

    def get_status(self, slave_sae_id: str) -> KeyStatus:
        return parse_status(self._request("GET", f"/api/v1/keys/{slave_sae_id}/status"))

    def get_enc_keys(
        self, slave_sae_id: str, number: int = 1, size: int | None = None
    ) -> list[QkdKey]:
        body = self._request(
            "POST", f"/api/v1/keys/{slave_sae_id}/enc_keys", json=_enc_body(number, size)
        )
        return parse_keys(body, expect=number)

    def get_dec_keys(self, master_sae_id: str, key_ids: Sequence[str]) -> list[QkdKey]:
        body = self._request(
            "POST", f"/api/v1/keys/{master_sae_id}/dec_keys", json=_dec_body(key_ids)
        )
        return parse_keys(body, expect=len(key_ids))


class AsyncSaeClient:
    """The same client for asyncio code (the messenger's workers)."""

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
        args = _client_args(base_url, ca, cert, key, sae_id, timeout_s)
        verify = args["verify"]
        self._http = AsyncHttpClient(
            args["base_url"], ssl_context=verify if isinstance(verify, ssl.SSLContext) else None,
            headers=args["headers"], timeout=args["timeout"])

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncSaeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, json: Any = None) -> dict[str, Any]:
        try:
            return _json(await self._http.request(method, path, json_body=json))
        except HttpError as exc:
            raise _connection_error(exc) from None

    async def get_status(self, slave_sae_id: str) -> KeyStatus:
        return parse_status(await self._request("GET", f"/api/v1/keys/{slave_sae_id}/status"))

    async def get_enc_keys(
        self, slave_sae_id: str, number: int = 1, size: int | None = None
    ) -> list[QkdKey]:
        body = await self._request(
            "POST", f"/api/v1/keys/{slave_sae_id}/enc_keys", json=_enc_body(number, size)
        )
        return parse_keys(body, expect=number)

    async def get_dec_keys(self, master_sae_id: str, key_ids: Sequence[str]) -> list[QkdKey]:
        body = await self._request(
            "POST", f"/api/v1/keys/{master_sae_id}/dec_keys", json=_dec_body(key_ids)
        )
        return parse_keys(body, expect=len(key_ids))

    async def get_stats(self) -> dict[str, Any]:
        """Pool and link figures (``GET /kme/v1/stats``: levels, key rate, QBER; no keys)."""
        return await self._request("GET", "/kme/v1/stats")
