"""Which SAEs one KME of a pair serves, so it knows which keys stay at home.

Both KMEs of a pair share one PKI, so a certificate says *who* an SAE is, not *where* it
fetches keys. A KME of a pair serves:

* its default SAE (``sae-alice`` at ``kme-alice``, ``sae-bob`` at ``kme-bob``), set when its
  record is first made;
* every SAE with a valid certificate that has called it (``status``, ``enc_keys``,
  ``dec_keys`` or ``/kme/v1/stats``): an SAE talks to the one KME its profile names. An SAE
  that calls the other KME moves there: that KME tells its peer over the KME channel
  (``POST /kme/v1/served``; in-process, ``LocalPeer``), and the peer forgets it
  (:meth:`KmeNode.called_by <keysource.kme.node.KmeNode.called_by>`).

The record is kept in a small SQLite file, so a restarted KME still knows where its SAEs are.
An SAE with a certificate that has called neither KME is served by nobody yet: enc_keys for
it is refused with a 503 that says so (:meth:`keysource.kme.node.KmeNode.enc_keys`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from keysource.sqlite_schema import Schema, open_schema

from .pki import PkiSaeRegistry

SCHEMA = "CREATE TABLE IF NOT EXISTS served (sae_id TEXT PRIMARY KEY, since REAL NOT NULL);"
# Version 1 is SCHEMA; see keysource.sqlite_schema for how the file is migrated or refused.
SERVED_SCHEMA = Schema(kind="KME served-SAE record", baseline=SCHEMA,
                       marker_tables=frozenset({"served"}))


class ServedSaes:
    """The SAE registry of one KME of a pair (see module doc)."""

    def __init__(self, enrolled: PkiSaeRegistry, path: Path, *,
                 defaults: Sequence[str] = ()) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.enrolled = enrolled
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            fresh = open_schema(self._db, SERVED_SCHEMA, path,
                                pragmas=("PRAGMA journal_mode=WAL",)).fresh
        except BaseException:
            self._db.close()
            raise
        path.chmod(0o600)
        self._served = {row[0] for row in self._db.execute("SELECT sae_id FROM served")}
        # Served SAEs the peer KME has been told about since this KME started. After a
        # restart each is announced again on its next call: a message lost while the peer
        # was down is sent again, and an announcement is idempotent.
        self._announced: set[str] = set()
        if fresh:
            for sae_id in defaults:
                self._record(sae_id)

    def close(self) -> None:
        self._db.close()

    def knows(self, sae_id: str) -> bool:
        """True if this KME serves ``sae_id`` (and its certificate is still valid)."""
        return sae_id in self._served and self.enrolled.knows(sae_id)

    def is_enrolled(self, sae_id: str) -> bool:
        """True if ``sae_id`` holds a valid certificate of the pair's CA (served or not)."""
        return self.enrolled.knows(sae_id)

    def called_by(self, sae_id: str) -> bool:
        """An authenticated SAE called this KME: from now on this KME serves it.

        True while the peer KME has not been told (:meth:`announced`) that this KME serves
        it (so the peer stops serving an SAE that moved here)."""
        if sae_id not in self._served:
            if not self.enrolled.knows(sae_id):
                return False
            self._record(sae_id)
        return sae_id not in self._announced

    def announced(self, sae_id: str) -> None:
        """The peer KME now knows that this KME serves ``sae_id``."""
        if sae_id in self._served:
            self._announced.add(sae_id)

    def forget(self, sae_id: str) -> None:
        """``sae_id`` moved to the peer KME (it said so): this KME no longer serves it."""
        self._announced.discard(sae_id)
        if sae_id in self._served:
            self._served.discard(sae_id)
            self._db.execute("DELETE FROM served WHERE sae_id = ?", (sae_id,))

    def _record(self, sae_id: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO served (sae_id, since) VALUES (?, ?)",
                         (sae_id, time.time()))
        self._served.add(sae_id)

    def served(self) -> list[str]:
        return sorted(self._served)
