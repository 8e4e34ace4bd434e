"""Live routing: which logged-in sessions a handle has, behind one small interface.

The relay asks the router, never a dict of its own, where a handle is connected.
:class:`LocalRouter` answers for this process. A scale-out backend (issue 19:
Redis pub/sub between relay processes) implements the same interface: ``join`` and
``leave`` also announce presence to the other relays, and ``wake`` tells the relay
that holds a handle's session that something is queued for it (the durable queue
is the store's; a wake-up only saves the wait for the next poll).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Generic, TypeVar

S = TypeVar("S")


class Router(ABC, Generic[S]):
    """Where each handle's live sessions are (newest last: it gets the file frames)."""

    @abstractmethod
    def join(self, handle: str, session: S) -> None:
        """``session`` has logged in as ``handle``."""

    @abstractmethod
    def leave(self, handle: str, session: S) -> S | None:
        """``session`` is gone; return the session that became ``handle``'s newest, if any."""

    @abstractmethod
    def sessions(self, handle: str) -> Sequence[S]:
        """``handle``'s live sessions on this relay, oldest first (empty: none here)."""

    def newest(self, handle: str) -> S | None:
        """The session that receives ``handle``'s file frames (its latest login)."""
        peers = self.sessions(handle)
        return peers[-1] if peers else None

    @abstractmethod
    def online(self) -> int:
        """Logged-in sessions on this relay (for /metrics)."""

    def wake(self, handle: str) -> None:
        """Something was queued for ``handle`` while none of its sessions is here; a
        multi-relay router tells the relay that has one (here: nothing to do)."""

    async def start(self) -> None:
        """Connect to the other relays, if any (after the store is open)."""

    async def stop(self) -> None:
        """Disconnect from the other relays (before the store closes)."""


class LocalRouter(Router[S]):
    """The in-process router: one relay, every session in one dict."""

    def __init__(self) -> None:
        self._live: dict[str, list[S]] = {}

    def join(self, handle: str, session: S) -> None:
        self._live.setdefault(handle, []).append(session)

    def leave(self, handle: str, session: S) -> S | None:
        peers = self._live.get(handle)
        if not peers or session not in peers:
            return None
        was_newest = peers[-1] is session
        peers.remove(session)
        if not peers:
            del self._live[handle]
            return None
        return peers[-1] if was_newest else None

    def sessions(self, handle: str) -> Sequence[S]:
        return self._live.get(handle, ())

    def online(self) -> int:
        return sum(len(peers) for peers in self._live.values())


__all__ = ["LocalRouter", "Router"]
