"""The KME-to-KME channel over HTTPS with mutual TLS (two-process mode).

Each KME presents its own certificate (OU=KME) to the other's server; the server accepts
the binding routes only from the configured peer KME_ID (see :mod:`keysource.kme.server`).
Spoken with the project's one KME HTTP client (:mod:`.http11`): a call cancelled mid-way
(the KME shutting down) still leaves its connection either reusable or closed.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from .http11 import AsyncHttpClient, HttpError, Response
from .node import PeerUnavailable, UnknownSae
from .pool import Binding, PoolExhausted, QuotaExceeded
from .sae_id import sae_id_path_segment


class HttpPeer:
    """:class:`keysource.kme.node.PeerChannel` over ``POST /kme/v1/...`` on the peer KME."""

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None,
        own_kme_id: str,
        timeout_s: float = 10.0,
    ) -> None:
        headers = {}
        if ssl_context is None:  # plain loopback mode: identity by header
            headers["X-KME-ID"] = own_kme_id
        self._client = AsyncHttpClient(
            base_url.rstrip("/"), ssl_context=ssl_context, headers=headers, timeout=timeout_s
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, path: str, body: dict[str, object]) -> Response:
        try:
            return await self._client.request("POST", path, json_body=body)
        except HttpError as exc:
            raise PeerUnavailable(str(exc)) from None

    async def push_binding(self, binding: Binding) -> list[str]:
        resp = await self._post("/kme/v1/bindings", binding.to_json())
        _raise_quota(resp)
        if resp.status_code != 200:
            raise PeerUnavailable(f"peer refused binding: {resp.status_code} {resp.text[:200]}")
        missing = resp.json().get("missing")
        if not isinstance(missing, list):
            raise PeerUnavailable("peer answered without a 'missing' list")
        return [str(m) for m in missing]

    async def cancel_binding(self, binding_id: str) -> bool:
        resp = await self._post("/kme/v1/cancel", {"binding_id": binding_id})
        if resp.status_code != 200:
            raise PeerUnavailable(f"peer refused cancel: {resp.status_code} {resp.text[:200]}")
        result = resp.json().get("result")
        if result not in ("cancelled", "applied"):
            raise PeerUnavailable(f"peer answered cancel with {result!r}")
        return bool(result == "cancelled")

    async def allocate(
        self, *, binding_id: str, master: str, slave: str, sizes: Sequence[int]
    ) -> Binding:
        resp = await self._post(
            "/kme/v1/allocate",
            {"binding_id": binding_id, "master_SAE_ID": master, "slave_SAE_ID": slave,
             "sizes": list(sizes)},
        )
        _raise_quota(resp)
        if resp.status_code == 503:
            body = resp.json()
            raise PoolExhausted(int(body.get("needed", 0)), int(body.get("available", 0)))
        refused = _body(resp)
        if resp.status_code == 400 and isinstance(refused.get("unknown_SAE_ID"), str):
            where = refused.get("KME_ID")
            raise UnknownSae(slave, where if isinstance(where, str) else "the allocator")
        if resp.status_code != 200:
            raise PeerUnavailable(f"peer refused allocation: {resp.status_code} {resp.text[:200]}")
        try:
            return Binding.from_json(resp.json())
        except ValueError as exc:
            raise PeerUnavailable(f"peer sent a malformed binding: {exc}") from None

    async def relay(self, body: dict[str, object]) -> dict[str, object]:
        """Relay frames to this neighbour (keysource.kme.network_node); its confirmations.

        PeerUnavailable when it cannot be reached, RelayFailed when it refused the frames or
        could not pass them on (``link`` names where, when it said so).
        """
        from .network_node import RelayFailed

        resp = await self._post("/kme/v1/relay", body)
        answer = _body(resp)
        if resp.status_code == 200:
            return answer
        link = answer.get("link")
        reason = answer.get("refused") or answer.get("message") or resp.text[:200]
        raise RelayFailed(f"{resp.status_code}: {reason}",
                          link if isinstance(link, str) else None)

    async def knows_sae(self, sae_id: str) -> bool:
        try:
            resp = await self._client.request(
                "GET", f"/kme/v1/saes/{sae_id_path_segment(sae_id)}")
        except HttpError as exc:
            raise PeerUnavailable(str(exc)) from None
        if resp.status_code != 200:
            raise PeerUnavailable(f"peer refused SAE lookup: {resp.status_code} {resp.text[:200]}")
        registered = _body(resp).get("registered")
        if not isinstance(registered, bool):
            raise PeerUnavailable("peer answered the SAE lookup without 'registered'")
        return registered


    async def serves_sae(self, sae_id: str) -> None:
        resp = await self._post("/kme/v1/served", {"SAE_ID": sae_id})
        if resp.status_code != 200:
            raise PeerUnavailable(
                f"peer refused the served-SAE notice: {resp.status_code} {resp.text[:200]}")


def _raise_quota(resp: Response) -> None:
    """Turn the peer's quota refusal (503 with a ``quota`` object) into QuotaExceeded."""
    if resp.status_code != 503:
        return
    quota = _body(resp).get("quota")
    if quota is None:
        return
    try:
        raise QuotaExceeded.from_json(quota)
    except ValueError as exc:
        raise PeerUnavailable(f"peer sent a malformed quota refusal: {exc}") from None


def _body(resp: Response) -> dict[str, object]:
    """The answer's JSON object, or {} when it is not one."""
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
