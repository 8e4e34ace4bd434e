"""Crash-safe link state: what one end must store, atomically, before a step's frames leave.

Both ends must agree on the position in each authentication key stream, on block numbers and
on whether a block's output (keys and authentication key refill) exists. So after every step
of an endpoint (start_block, receive) the shell stores the endpoint's exported state *together
with the keys that step output*, in one transaction with the key pool, and only then sends the
step's frames. A crash at any point then leaves each end either before or after a whole step:

* a pad whose frame may have left is recorded as used, so it is never used again;
* Alice commits a block (keys, refill, ``last_committed``) in one transaction on DONE, i.e. once
  Bob has stored the same block as pending; Bob commits it on COMMIT, or on the next START that
  names it, and drops it on a START that does not (Alice never committed it). A refill is thus
  used only once both ends hold it, and both pools get the same keys.

Sans-I/O: :class:`Checkpoint` decides what is due; the shell (net.py) awaits the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .protocol import AliceEndpoint, BobEndpoint, Output


class LinkStateStore(Protocol):
    """Where an endpoint's state lives (a KME keeps it in its key pool's file)."""

    async def load(self) -> bytes | None:
        """The last stored state, or None for a link that never ran."""

    async def commit(self, state: bytes, keys: Sequence[tuple[str, bytes]]) -> None:
        """Store ``keys`` and replace the state, atomically (all or nothing, durably)."""


class Checkpoint:
    """Tracks the last stored state of one endpoint."""

    def __init__(self, endpoint: AliceEndpoint | BobEndpoint, stored: bytes | None = None
                 ) -> None:
        self.endpoint = endpoint
        self.stored = stored

    def due(self, out: Output) -> tuple[bytes, list[tuple[str, bytes]]] | None:
        """(state, keys) to commit before ``out.send`` leaves; None when nothing changed."""
        state = self.endpoint.export_state()
        keys = [key for batch in out.keys for key in batch]
        if state == self.stored and not keys:
            return None
        return state, keys

    def committed(self, state: bytes) -> None:
        self.stored = state
