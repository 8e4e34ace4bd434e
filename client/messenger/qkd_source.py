"""Fetching QKD keys for the protocol from this SAE's KME (ETSI GS QKD 014), with retries.

The sender asks its KME for fresh keys (``enc_keys``) addressed to the peer's SAE;
the receiver asks its own KME for the same keys by key_ID (``dec_keys``). The
receiver's KME may learn about a key a moment after the sender got it, so
``dec_keys`` is retried briefly before giving up.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from client.config import ClientConfig
from client.protocol import QkdKeys
from keysource.kme.client import AsyncSaeClient, KmeError, KmeUnavailable, QkdKey

log = logging.getLogger(__name__)

DEC_KEYS_RETRIES = 5
DEC_KEYS_RETRY_DELAY_S = 0.3
FETCHED_CACHE = 256
PATHS_KEPT = 1024  # peers whose last key path is remembered (in memory only)


@dataclass(frozen=True)
class PeerKeyPath:
    """The KMEs the last keys shared with a peer SAE went through (the KME's key_extension);
    ``sent``: this SAE asked for them (enc_keys), so ``nodes`` starts at its own KME."""

    nodes: tuple[str, ...]
    sent: bool


class QkdSource:
    """This SAE's view of its KME; ``None`` results mean "no QKD material now"."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.last_error: str | None = None
        self._client: AsyncSaeClient | None = None
        self._fetched: dict[str, bytes] = {}  # in memory only, oldest dropped first
        # (peer SAE_ID, sent) -> the path of the last keys this SAE sent it / got from it
        self._paths: dict[tuple[str, bool], PeerKeyPath] = {}
        if config.kme_url and config.sae_id:
            https = config.kme_url.startswith("https://")
            self._client = AsyncSaeClient(
                config.kme_url,
                ca=config.kme_ca if https else None,
                cert=config.sae_cert if https else None,
                key=config.sae_key if https else None,
                sae_id=config.sae_id,
                timeout_s=5.0,
            )

    @property
    def configured(self) -> bool:
        return self._client is not None

    async def enc_keys(self, peer_sae_id: str, number: int) -> QkdKeys | None:
        if self._client is None or number <= 0:
            return None
        try:
            keys = await self._client.get_enc_keys(peer_sae_id, number=number)
        except KmeError as exc:
            self._note(exc)
            return None
        self.last_error = None
        self._note_path(peer_sae_id, keys, sent=True)
        return QkdKeys.from_pairs([(k.key_ID, k.key) for k in keys])

    def path_with(self, peer_sae_id: str, *, sent: bool) -> PeerKeyPath | None:
        """The path of the last keys this SAE got for ``peer_sae_id`` (``sent``: with
        enc_keys) or from it (dec_keys); None if none since start or the KME named none."""
        return self._paths.get((peer_sae_id, sent))

    def _note_path(self, peer_sae_id: str, keys: list[QkdKey], *, sent: bool) -> None:
        path = next((k.path for k in reversed(keys) if k.path), ())
        if not path:
            return
        self._paths.pop((peer_sae_id, sent), None)  # newest last, so the oldest goes first
        self._paths[(peer_sae_id, sent)] = PeerKeyPath(path, sent)
        while len(self._paths) > PATHS_KEPT:
            self._paths.pop(next(iter(self._paths)))

    async def dec_keys(self, peer_sae_id: str, key_ids: tuple[str, ...]) -> QkdKeys | None:
        if self._client is None or not key_ids:
            return None
        # A KME hands a key to one SAE (and again to it only within its re-delivery grace):
        # keep what we fetched until it is used, so a message
        # retried later (e.g. after another input was missing) can still be opened.
        if all(k in self._fetched for k in key_ids):
            return QkdKeys(key_ids, tuple(self._fetched[k] for k in key_ids))
        for attempt in range(DEC_KEYS_RETRIES):
            try:
                keys = await self._client.get_dec_keys(peer_sae_id, list(key_ids))
            except KmeUnavailable as exc:
                self._note(exc)
                await asyncio.sleep(DEC_KEYS_RETRY_DELAY_S * (attempt + 1))
                continue
            except KmeError as exc:
                self._note(exc)
                return None
            self.last_error = None
            self._note_path(peer_sae_id, keys, sent=False)
            for key in keys:
                self._fetched[key.key_ID] = key.key
            while len(self._fetched) > FETCHED_CACHE:
                self._fetched.pop(next(iter(self._fetched)))
            return QkdKeys.from_pairs([(k.key_ID, k.key) for k in keys])
        return None

    async def stats(self) -> dict[str, Any] | None:
        """Pool and link figures from the KME's /kme/v1/stats (no key material)."""
        if self._client is None:
            return None
        try:
            return await self._client.get_stats()
        except KmeError as exc:
            self._note(exc)
            return None

    def _note(self, exc: KmeError) -> None:
        self.last_error = str(exc)
        log.info("KME: %s", exc)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
