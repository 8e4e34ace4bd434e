"""The key panel's figures: the KME's pool and link, and the open conversation's sources."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from client.protocol import Session

from .api import ConversationId, Event, KeyPath, KeyStatus, KeyStatusEvent
from .qkd_source import PeerKeyPath

KEY_STATUS_INTERVAL_S = 2.0
ALGORITHMS = ("ML-KEM-768", "X25519", "Ed25519 + ML-DSA-65", "AES-256-GCM")


class LinkStats(Protocol):
    """The KME's statistics (client.messenger.qkd_source.QkdSource)."""

    last_error: str | None

    @property
    def configured(self) -> bool: ...
    async def stats(self) -> dict[str, Any] | None: ...
    def path_with(self, peer_sae_id: str, *, sent: bool) -> PeerKeyPath | None: ...


class SessionReader(Protocol):
    def load_session(self, peer: str) -> Session | None: ...


class KeyStatusTracker:
    """Polls the KME every couple of seconds; answers ``status`` from the last figures."""

    def __init__(self, qkd: LinkStats, sessions: SessionReader, kme_label: str,
                 handle: str = "me") -> None:
        self._qkd = qkd
        self._sessions = sessions
        self._kme_label = kme_label
        self._handle = handle
        self._stats: dict[str, Any] | None = None

    def status(self, conversation: ConversationId | None = None) -> KeyStatus:
        stats = self._stats or {}
        pool, link = stats.get("pool", {}), stats.get("link", {})
        qber = link.get("last_qber")
        threshold = float(link.get("qber_threshold", 0.11))
        alarm = None
        if qber is not None and qber > threshold:
            alarm = f"QBER {qber:.1%} above {threshold:.0%}: blocks aborted (eavesdropper?)"
        elif stats and not link.get("connected", True):
            alarm = "QKD link down"
        elif self._qkd.last_error:
            alarm = self._qkd.last_error
        sources, degraded, mode = "", False, "ratchet"
        session = self._sessions.load_session(conversation.peer) if conversation else None
        if session is not None:
            status = session.status()
            mode = status.mode
            label = status.sending if status.sending != "-" else status.handshake
            if status.receiving != "-" and status.sending == "-":
                label = status.receiving
            sources, degraded = label, "degraded" in label
            if mode == "otp":
                sources = "QKD one-time pad"
        key_path = key_path_back = None
        if session is not None and conversation is not None:
            key_path = self._key_path(conversation.peer, session.peer_sae_id, sent=True)
            key_path_back = self._key_path(conversation.peer, session.peer_sae_id, sent=False)
        return KeyStatus(
            pool_keys=pool.get("stored"), pool_max=pool.get("max_key_count"),
            key_rate=link.get("key_rate_per_s"), qber=qber, qber_threshold=threshold,
            link_alarm=alarm, sources=sources, degraded=degraded, mode=mode,
            algorithms=ALGORITHMS, kme=self._kme_label if self._qkd.configured else "",
            key_path=key_path, key_path_back=key_path_back,
        )

    def _key_path(self, peer: str, peer_sae_id: str, *, sent: bool) -> KeyPath | None:
        """The path of the last keys this SAE sent ``peer`` (or got from it), the way they
        went, as the KMEs named it."""
        path = self._qkd.path_with(peer_sae_id, sent=sent)
        if path is None:
            return None
        sender, receiver = (self._handle, peer) if sent else (peer, self._handle)
        return KeyPath(sender, receiver, path.nodes)

    async def run(self, emit: Callable[[Event], None]) -> None:
        """Poll until cancelled (``stop`` cancels it and waits, before the store closes)."""
        while True:
            stats = await self._qkd.stats()
            if stats is not None:
                self._stats = stats
            emit(KeyStatusEvent(self.status()))
            await asyncio.sleep(KEY_STATUS_INTERVAL_S)
