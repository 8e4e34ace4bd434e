"""Secret-key objects this process made a moment ago, found again by their secret bytes.

Keys travel and are stored as bytes, and loading a secret key from its bytes costs about
as much as making it: X25519 derives the public key again (a scalar multiplication),
ML-KEM expands its seed (a key generation). A ratchet turn makes a key pair, stores it as
bytes, and uses the secret once, when the peer's next turn arrives: keeping the object it
was made as until then saves that cost on every turn received.

Bounded: at most ``limit`` keys, the oldest forgotten first. :meth:`RecentKeys.take`
removes the key it returns, so a used secret stays here no longer than the caller keeps it;
an unused one stays until ``limit`` newer keys were made (memory only, never persisted).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class RecentKeys:
    """Key objects by (kind, secret bytes), thread-safe."""

    def __init__(self, limit: int) -> None:
        # Public: a benchmark that runs many members in one process sizes it as theirs.
        self.limit = limit
        self._keys: OrderedDict[tuple[Any, bytes], Any] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, kind: Any, secret: bytes, key: Any) -> None:
        with self._lock:
            self._keys[(kind, secret)] = key
            while len(self._keys) > self.limit:
                self._keys.popitem(last=False)

    def take(self, kind: Any, secret: bytes) -> Any | None:
        """The object made for ``secret`` (then forgotten here), or None."""
        with self._lock:
            return self._keys.pop((kind, secret), None)

    def __len__(self) -> int:
        return len(self._keys)

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()


# The keys ratchet turns made, waiting for the peers' next turns: one per conversation
# (a member of a 100-member group that rekeyed holds 99), as many as ML-KEM seed
# expansions are cached (openssl_backend._expand).
MADE = RecentKeys(limit=256)
