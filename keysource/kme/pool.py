"""The KME key pool: QKD keys in SQLite, each handed to its SAE once, surviving any crash.

One row per 256-bit pool key (``key_ID`` UUID, 32 bytes), identical at both ends of a
link. A key moves through three states:

``free``   arrived from the link, not yet promised to anybody;
``bound``  promised to one (master SAE, slave SAE) pair by a *binding* (see below),
           with the local SAE acting as ``master`` (it fetches with enc_keys here) or
           ``slave`` (it fetches with dec_keys here);
gone       handed out: deleted in the very transaction that reads it, and its key_ID
           written to the ``delivered`` journal (IDs only, never key material) so a
           replayed link batch can never bring it back.

Every state change is one SQLite transaction (``BEGIN IMMEDIATE``, WAL, ``synchronous=FULL``),
so a crash or ``kill -9`` at any instant leaves each key in exactly one state: no
undelivered key is lost, none is handed out twice, not even after power loss.

Re-delivery to the same slave SAE (an extension of ETSI GS QKD 014)
--------------------------------------------------------------------
A dec_keys answer can be lost after this KME committed it: the SAE is killed, or its host
loses power, between our answer and the moment it stored what it decrypted. The key is
gone here, the sender's message can never be opened, and with the ratchet every later
message that mixed it is stuck too. No SAE-side cache closes that window (it always lies
between our answer and the SAE's own commit), so this KME closes it: a key handed out by
dec_keys keeps its material in the ``redeliverable`` table, in the same transaction, for
``redelivery_grace_s`` seconds (default :data:`DEFAULT_REDELIVERY_GRACE_S`). Within that
time a dec_keys by **the same slave SAE** (the SAE_ID of its client certificate) for the same
master SAE and key_IDs gets the same keys again; any other caller gets exactly the answer it
got before (400: unknown or already delivered), so the key is still delivered to one SAE
only. The grace does not restart on a repeat. When it ends the material is erased (the
node's sweeper, and every dec_keys, delete what is due; expired rows are never served even
before that), and the key_ID stays in the ``delivered`` journal, so a replayed link batch
still cannot bring it back. The material lives in this same file, with the same
permissions, as undelivered keys always did. ``redelivery_grace_s=0`` is ETSI's strict
once-only behaviour.

enc_keys keeps nothing: the master names no key_IDs (ETSI has no way to ask for a master key
again), and a master killed after enc_keys loses nothing the peer needs — it never sent a
message under those keys, so nobody will ask for them; it simply asks for fresh ones.

Limits on bindings (no SAE can starve the others)
-------------------------------------------------
Bound keys wait for an SAE that may never come: a master can bind keys to a slave that never
fetches them. Three rules keep that from stopping the link for everybody:

* the link's :meth:`KeyPool.room` counts **free** keys only, so bound keys never stop refills;
* :class:`BindingLimits` caps the pool keys bound and not yet fetched per (master, slave) pair
  and per master SAE; a binding over either quota is refused whole (:class:`QuotaExceeded`),
  at the allocator when it binds and at the follower when it applies;
* a binding left unfetched ``ttl_s`` after it was recorded here (and, at the allocator,
  confirmed by the follower) expires: its keys are deleted
  (``secure_delete``) and journalled as delivered to ``(expired)``, so they are never handed
  to anybody. Each KME expires on its own clock from the time it recorded the binding, so
  both ends destroy the same keys; a key an SAE asks for after that is simply unknown.

Keys leave a pool only through bindings: there is no way to take free keys directly, since
on a linked pool that would leave the peer's copy free for another binding.

A *binding* is the unit the two KMEs agree on: a list of delivered keys (each made of one or
more pool keys, see :mod:`keysource.kme.etsi` for sizes), the SAE pair and the KME at which
the master fetches them. Only one KME of a link (the allocator) creates bindings; the other
applies them. :mod:`keysource.kme.node` explains the exchange.

The pool is synchronous and process-safe: several processes may share one file.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keysource.sqlite_schema import Migration, Schema, open_schema
from keysource.uuid_text import canonical_uuid

from . import linkstate
from .defaults import DEFAULT_REDELIVERY_GRACE_S
from .sae_id import sae_id_problem

POOL_KEY_BYTES = 32
POOL_KEY_BITS = POOL_KEY_BYTES * 8
DEFAULT_MAX_KEY_COUNT = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,   -- arrival order: oldest keys go first
    key_id     TEXT NOT NULL UNIQUE,
    material   BLOB NOT NULL,
    arrived    REAL NOT NULL,
    bound_to   TEXT,        -- key_ID of the delivered key this part belongs to (NULL = free)
    part       INTEGER,     -- position of this pool key inside that delivered key
    size_bits  INTEGER,     -- size of that delivered key
    master_sae TEXT,
    slave_sae  TEXT,
    role       TEXT CHECK (role IN ('master', 'slave')),
    binding_id TEXT
);
CREATE INDEX IF NOT EXISTS keys_bound ON keys(bound_to);
CREATE INDEX IF NOT EXISTS keys_pair ON keys(master_sae, slave_sae, role, size_bits);
CREATE INDEX IF NOT EXISTS keys_binding ON keys(binding_id);
CREATE TABLE IF NOT EXISTS bindings (
    binding_id TEXT PRIMARY KEY,
    body       TEXT NOT NULL,              -- Binding.to_json()
    acked      INTEGER NOT NULL DEFAULT 0, -- 1: both KMEs hold it, -1: cancelled
    created    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS delivered (
    key_id   TEXT PRIMARY KEY,   -- pool key_ID that left this KME (never key material)
    bound_to TEXT,
    sae      TEXT NOT NULL,
    at       REAL NOT NULL
);
"""

_REDELIVERABLE = """
CREATE TABLE IF NOT EXISTS redeliverable (
    key_id     TEXT PRIMARY KEY,   -- the delivered key's key_ID (its first pool key)
    master_sae TEXT NOT NULL,
    slave_sae  TEXT NOT NULL,      -- the only SAE that may fetch it again
    material   BLOB NOT NULL,      -- the delivered key, exactly as it was answered
    at         REAL NOT NULL       -- when it was first handed out (time.time())
);
CREATE INDEX IF NOT EXISTS redeliverable_at ON redeliverable(at);
"""

# Version 1 is _SCHEMA (pools from before versions were recorded hold it); see
# keysource.sqlite_schema for how a pool file is migrated or refused on open.
POOL_SCHEMA = Schema(
    kind="KME key pool",
    baseline=_SCHEMA,
    marker_tables=frozenset({"keys", "bindings", "delivered"}),
    migrations=(
        # The allocator lists unacknowledged bindings on every push; bindings are kept for
        # ever, so without this index each push scanned and sorted all of them.
        Migration(2, "index the unacknowledged bindings",
                  "CREATE INDEX IF NOT EXISTS bindings_unacked ON bindings(created)"
                  " WHERE acked = 0"),
        # dec_keys answers kept for the same slave SAE during the grace (module docstring).
        Migration(3, "keep dec_keys answers re-servable to their SAE for a grace period",
                  _REDELIVERABLE),
        # The QKD link's state, written with the keys it produces (keysource.kme.linkstate).
        Migration(4, "keep the QKD link state in the pool", linkstate.LINK_STATE_SQL),
    ),
)


_CANCELLED = -1  # bindings.acked of a binding the follower refused for ever
EXPIRED_SAE = "(expired)"  # the delivered journal's "SAE" for keys destroyed unfetched
UNPAIRED_SAE = "(unpaired)"  # ... for free keys the other pool of a pair never got

# Default quotas, as shares of the pool's max_key_count: one master can never hold more than
# an eighth of the pool unfetched, so the others always find free keys, even right after it
# drained what it could; with the default 100000 keys a pair's quota (6250) still fits one
# full request (128 keys of 8192 bits = 4096 pool keys).
POOL_SHARE_PER_PAIR = 16
POOL_SHARE_PER_MASTER = 8
DEFAULT_BINDING_TTL_S = 24 * 3600.0


@dataclass(frozen=True)
class BindingLimits:
    """How many pool keys may wait bound and unfetched, and for how long (module docstring)."""

    per_pair: int = DEFAULT_MAX_KEY_COUNT // POOL_SHARE_PER_PAIR  # per (master, slave) SAEs
    per_master: int = DEFAULT_MAX_KEY_COUNT // POOL_SHARE_PER_MASTER  # over all its slaves
    ttl_s: float = DEFAULT_BINDING_TTL_S  # an unfetched binding is destroyed this long after

    @classmethod
    def for_pool(
        cls, max_key_count: int, *, per_pair: int | None = None, per_master: int | None = None,
        ttl_s: float = DEFAULT_BINDING_TTL_S,
    ) -> BindingLimits:
        """The limits for a pool of ``max_key_count`` keys; None = the default share of it."""
        return cls(
            per_pair=per_pair if per_pair is not None
            else max(1, max_key_count // POOL_SHARE_PER_PAIR),
            per_master=per_master if per_master is not None
            else max(1, max_key_count // POOL_SHARE_PER_MASTER),
            ttl_s=ttl_s,
        )

    def __post_init__(self) -> None:
        if self.per_pair <= 0 or self.per_master <= 0:
            raise ValueError("the bound-key quotas must be positive")
        if not self.ttl_s > 0:  # also refuses NaN
            raise ValueError("the binding lifetime must be > 0")


class PoolError(Exception):
    """Base class for key pool failures."""


class PoolExhausted(PoolError):
    """Not enough free keys for the request; nothing was taken."""

    def __init__(self, needed: int, available: int) -> None:
        super().__init__(f"need {needed} pool keys, {available} available")
        self.needed = needed
        self.available = available


class BadBatch(PoolError):
    """A batch from the link is malformed (bad UUID, wrong key length, conflicting copy)."""


class BindingConflict(PoolError):
    """A binding names a key already bound elsewhere: the two pools disagree."""


class QuotaExceeded(PoolError):
    """A binding would put more unfetched keys on an SAE pair or master than allowed."""

    def __init__(self, quota: str, *, master: str, slave: str, bound: int, requested: int,
                 limit: int) -> None:
        whom = f"master SAE {master}" if quota == "per_master" else f"SAE pair {master} -> {slave}"
        super().__init__(
            f"{quota} quota: {whom} already has {bound} pool keys bound and not yet fetched; "
            f"{requested} more would exceed the limit of {limit}"
        )
        self.quota = quota
        self.master = master
        self.slave = slave
        self.bound = bound
        self.requested = requested
        self.limit = limit

    def to_json(self) -> dict[str, object]:
        return {"quota": self.quota, "master_SAE_ID": self.master, "slave_SAE_ID": self.slave,
                "bound": self.bound, "requested": self.requested, "limit": self.limit}

    @classmethod
    def from_json(cls, data: object) -> QuotaExceeded:
        """Parse a refusal sent by the peer KME; ValueError when malformed."""
        try:
            assert isinstance(data, dict)
            quota = data["quota"]
            if quota not in ("per_pair", "per_master"):
                raise ValueError(f"unknown quota {quota!r}")
            return cls(quota, master=_sae_id_text(data["master_SAE_ID"]),
                       slave=_sae_id_text(data["slave_SAE_ID"]),
                       bound=int(data["bound"]), requested=int(data["requested"]),
                       limit=int(data["limit"]))
        except (AssertionError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed quota refusal: {exc!r}") from None


class KeyLookupError(PoolError):
    """dec_keys named keys that cannot be given to this caller; nothing was taken.

    ``unknown`` are key_IDs this KME does not hold for anybody (never issued, already
    delivered, or a typo); ``foreign`` are key_IDs bound to a different SAE pair.
    """

    def __init__(self, unknown: Sequence[str], foreign: Sequence[str]) -> None:
        parts = []
        if unknown:
            parts.append(f"unknown key_IDs: {', '.join(unknown)}")
        if foreign:
            parts.append(f"key_IDs reserved for another SAE pair: {', '.join(foreign)}")
        super().__init__("; ".join(parts))
        self.unknown = tuple(unknown)
        self.foreign = tuple(foreign)


@dataclass(frozen=True)
class PoolKey:
    """One key handed out: its key_ID and its bytes (not shown by repr)."""

    key_ID: str
    key: bytes
    # The KMEs the key went through, master's first (ETSI 014 ``key_extension``, see
    # keysource.kme.etsi.key_container); empty for keys handed to nobody (relay link keys).
    path: tuple[str, ...] = field(default=(), compare=False)

    def __repr__(self) -> str:
        return f"PoolKey(key_ID={self.key_ID!r}, {len(self.key) * 8} bits)"


@dataclass(frozen=True)
class BoundKey:
    """A key promised to an SAE pair: ``size_bits`` made from ``parts`` (pool key_IDs)."""

    key_ID: str
    size_bits: int
    parts: tuple[str, ...]


@dataclass(frozen=True)
class Binding:
    """Keys promised to (master, slave), fetched by the master at ``master_kme``."""

    binding_id: str
    master_SAE_ID: str
    slave_SAE_ID: str
    master_kme: str
    keys: tuple[BoundKey, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "binding_id": self.binding_id,
            "master_SAE_ID": self.master_SAE_ID,
            "slave_SAE_ID": self.slave_SAE_ID,
            "master_kme": self.master_kme,
            "keys": [
                {"key_ID": k.key_ID, "size": k.size_bits, "parts": list(k.parts)}
                for k in self.keys
            ],
        }

    @classmethod
    def from_json(cls, data: object) -> Binding:
        """Parse a binding received from the peer KME; raise ValueError when malformed."""
        if not isinstance(data, dict):
            raise ValueError("binding must be a JSON object")
        try:
            keys = tuple(
                BoundKey(
                    key_ID=_uuid_text(k["key_ID"]),
                    size_bits=_positive_int(k["size"]),
                    parts=tuple(_uuid_text(p) for p in k["parts"]),
                )
                for k in data["keys"]
            )
            binding = cls(
                binding_id=_uuid_text(data["binding_id"]),
                master_SAE_ID=_sae_id_text(data["master_SAE_ID"]),
                slave_SAE_ID=_sae_id_text(data["slave_SAE_ID"]),
                master_kme=_nonempty_str(data["master_kme"]),
                keys=keys,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed binding: {exc!r}") from None
        for key in keys:
            if not key.parts or key.parts[0] != key.key_ID:
                raise ValueError("a bound key's key_ID must be its first part")
            if len(key.parts) != parts_for_size(key.size_bits):
                raise ValueError("a bound key's parts do not match its size")
        parts = [part for key in keys for part in key.parts]
        if len(set(parts)) != len(parts):
            raise ValueError("a pool key is named twice in one binding")
        return binding


@dataclass(frozen=True)
class PoolStats:
    stored: int  # rows in the pool (free + bound)
    free: int
    bound_master: int  # bound pool keys our SAEs fetch with enc_keys
    bound_slave: int  # bound pool keys our SAEs fetch with dec_keys
    delivered: int  # pool keys handed out so far (journal size)
    max_key_count: int
    redeliverable: int = 0  # dec_keys answers still kept for their SAE (within the grace)


def parts_for_size(size_bits: int) -> int:
    """Pool keys needed for one delivered key of ``size_bits`` (concatenate, then truncate)."""
    return max(1, -(-size_bits // POOL_KEY_BITS))


def assemble(parts: Sequence[bytes], size_bits: int) -> bytes:
    """Concatenate pool keys and keep the first ``size_bits`` bits (a multiple of 8)."""
    return b"".join(parts)[: size_bits // 8]


def _uuid_text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("key_ID must be a string")
    try:
        return canonical_uuid(value)
    except ValueError:
        raise TypeError(f"not a UUID: {value[:64]!r}") from None


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TypeError("expected a positive integer")
    return value


def _sae_id_text(value: object) -> str:
    problem = sae_id_problem(value)
    if problem is not None:
        raise TypeError(f"invalid SAE_ID: {problem}")
    assert isinstance(value, str)
    return value


def _nonempty_str(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("expected a non-empty string")
    return value


_IN_CHUNK = 500  # values per "IN (...)" (far below SQLite's variable limit)


def _select_in(db: sqlite3.Connection, query: str, values: Sequence[str], *args: object,
               order: str = "") -> list[Any]:
    """Rows of ``query`` ending in ``... IN`` for every value, in chunks (``args`` bind the
    placeholders before the IN list). One statement per chunk, not one per value."""
    rows: list[Any] = []
    for start in range(0, len(values), _IN_CHUNK):
        chunk = values[start:start + _IN_CHUNK]
        rows.extend(db.execute(f"{query} ({','.join('?' * len(chunk))}) {order}",
                               (*args, *chunk)).fetchall())
    return rows


class KeyPool:
    """A durable, once-only QKD key store (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_key_count: int = DEFAULT_MAX_KEY_COUNT,
        busy_timeout_s: float = 30.0,
        redelivery_grace_s: float = DEFAULT_REDELIVERY_GRACE_S,
        binding_limits: BindingLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_key_count <= 0:
            raise ValueError("max_key_count must be positive")
        if not redelivery_grace_s >= 0:  # also refuses NaN
            raise ValueError("the redelivery grace must be >= 0 seconds")
        self.path = Path(path)
        self.max_key_count = max_key_count
        self.redelivery_grace_s = float(redelivery_grace_s)
        self.binding_limits = binding_limits or BindingLimits.for_pool(max_key_count)
        self._clock = clock  # wall clock: retention times survive restarts in the file
        # Free keys, counted once and then kept up to date by the writes that change them
        # (None: count again). A full pool holds many; counting them after every relay
        # hop's draw and claim cost more than the draw itself.
        self._free: int | None = None
        self._data_version = 0  # PRAGMA data_version when _free was counted
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        self._db = sqlite3.connect(
            str(self.path),
            timeout=busy_timeout_s,
            isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
            check_same_thread=False,  # callers serialise access (one thread or a lock)
        )
        if fresh:
            self.path.chmod(0o600)  # raw key material lives here
        try:
            open_schema(self._db, POOL_SCHEMA, self.path, pragmas=(
                "PRAGMA journal_mode=WAL",
                # FULL: a commit that handed keys out survives power loss, so a key can never
                # come back after a crash and be served a second time.
                "PRAGMA synchronous=FULL",
                # Deleted rows (delivered keys, expired dec_keys answers) are overwritten with
                # zeros in the database pages, not merely unlinked. (Older page images in the
                # WAL are overwritten as the WAL is reused.)
                "PRAGMA secure_delete=ON",
                f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}",
            ))
        except BaseException:
            self._db.close()
            raise

    # -- plumbing -----------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> KeyPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    class _Txn:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: object, *rest: object) -> None:
            if exc_type is None:
                self.db.execute("COMMIT")
            else:
                self.db.execute("ROLLBACK")

    def _write(self) -> KeyPool._Txn:
        """One write transaction; the write lock is taken up front so readers never upgrade."""
        return KeyPool._Txn(self._db)

    # -- arrivals from the link ---------------------------------------------------------

    def room(self) -> int:
        """How many more free pool keys fit under ``max_key_count`` (the link's back-pressure).

        Only free keys count: keys bound to an SAE pair that does not fetch them must not
        stop the link for everybody (they are capped by :class:`BindingLimits` instead).
        """
        return max(0, self.max_key_count - self.free_count())

    def add_keys(self, batch: Iterable[tuple[str, bytes]], *,
                 link_state: tuple[str, bytes] | None = None) -> int:
        """Store a link batch atomically; return how many keys were new.

        With ``link_state`` (name, state) that link end's state is replaced in the same
        transaction (keysource.kme.linkstate).

        Idempotent: a key_ID already held with the same bytes is skipped, and one that was
        already delivered is never stored again. The whole batch is accepted even if it
        overshoots ``max_key_count`` slightly, so both ends keep identical pools (the link
        stops producing when :meth:`room` is 0).
        """
        rows = []
        for key_id, material in batch:
            try:
                key_id = _uuid_text(key_id)
            except TypeError as exc:
                raise BadBatch(str(exc)) from None
            if not isinstance(material, bytes | bytearray) or len(material) != POOL_KEY_BYTES:
                raise BadBatch(f"key {key_id} is not {POOL_KEY_BYTES} bytes")
            rows.append((key_id, bytes(material)))
        now = time.time()
        added = 0
        with self._write() as db:
            for key_id, material in rows:
                held = db.execute(
                    "SELECT material FROM keys WHERE key_id = ?", (key_id,)
                ).fetchone()
                if held is not None:
                    if held[0] != material:
                        raise BadBatch(f"key {key_id} already held with different bytes")
                    continue
                if db.execute("SELECT 1 FROM delivered WHERE key_id = ?", (key_id,)).fetchone():
                    continue  # replayed after delivery: never serve it again
                db.execute(
                    "INSERT INTO keys (key_id, material, arrived) VALUES (?, ?, ?)",
                    (key_id, material, now),
                )
                added += 1
            if link_state is not None:
                linkstate.write(db, *link_state)
        if self._free is not None:
            self._free += added
        return added

    def link_state(self, name: str) -> bytes | None:
        """A link end's last state (see add_keys), or None."""
        return linkstate.read(self._db, name)

    # -- bindings -------------------------------------------------------------------------

    def bind(
        self,
        *,
        binding_id: str,
        master_SAE_ID: str,
        slave_SAE_ID: str,
        master_kme: str,
        local_kme: str,
        sizes: Sequence[int],
    ) -> Binding:
        """Allocator side: promise free keys (oldest first) to an SAE pair, all or nothing.

        Idempotent on ``binding_id`` (a retried allocate request gets the same keys back).
        """
        binding_id = _uuid_text(binding_id)
        with self._write() as db:
            existing = db.execute(
                "SELECT body FROM bindings WHERE binding_id = ?", (binding_id,)
            ).fetchone()
            if existing is not None:
                return Binding.from_json(json.loads(existing[0]))
            needed = sum(parts_for_size(s) for s in sizes)
            quota = self._over_quota(db, master_SAE_ID, slave_SAE_ID, needed)
            if quota is not None:
                raise quota
            rows = db.execute(
                "SELECT key_id FROM keys WHERE bound_to IS NULL ORDER BY seq LIMIT ?", (needed,)
            ).fetchall()
            if len(rows) < needed:
                raise PoolExhausted(needed, len(rows))
            ids = [r[0] for r in rows]
            keys = []
            for size in sizes:
                count = parts_for_size(size)
                parts, ids = tuple(ids[:count]), ids[count:]
                keys.append(BoundKey(key_ID=parts[0], size_bits=size, parts=parts))
            binding = Binding(binding_id, master_SAE_ID, slave_SAE_ID, master_kme, tuple(keys))
            self._store_binding(db, binding, local_kme=local_kme, acked=False)
        if self._free is not None:
            self._free -= needed
        return binding

    def apply_binding(self, binding: Binding, *, local_kme: str) -> list[str]:
        """Follower side: record a binding made by the allocator, all or nothing.

        Returns the pool key_IDs that have not arrived here yet (then nothing is applied;
        the allocator retries). Applying the same binding twice is a no-op. Raises
        :class:`BindingConflict` when a key is bound differently or already delivered, and
        :class:`QuotaExceeded` when the slave fetches here and the binding would exceed a
        quota: the binding is then cancelled for ever (the allocator frees its keys).
        """
        refused: QuotaExceeded | None = None
        with self._write() as db:
            row = db.execute(
                "SELECT acked FROM bindings WHERE binding_id = ?", (binding.binding_id,)
            ).fetchone()
            if row is not None:
                if row[0] == _CANCELLED:
                    raise BindingConflict(f"binding {binding.binding_id} was cancelled")
                return []
            parts = [part for key in binding.keys for part in key.parts]
            held = dict(_select_in(db, "SELECT key_id, bound_to FROM keys WHERE key_id IN", parts))
            absent = [part for part in parts if part not in held]
            delivered = set(r[0] for r in _select_in(
                db, "SELECT key_id FROM delivered WHERE key_id IN", absent))
            missing = []
            for part in parts:
                if part not in held:
                    if part in delivered:
                        raise BindingConflict(f"pool key {part} was already delivered here")
                    missing.append(part)
                elif held[part] is not None:
                    raise BindingConflict(f"pool key {part} is already bound to {held[part]}")
            if missing:
                return missing
            # Quotas hold where the slave fetches (the keys that may wait for ever); the
            # master's side was checked by the allocator when it bound them.
            if binding.master_kme != local_kme:
                needed = sum(len(key.parts) for key in binding.keys)
                refused = self._over_quota(
                    db, binding.master_SAE_ID, binding.slave_SAE_ID, needed)
            if refused is None:
                self._store_binding(db, binding, local_kme=local_kme, acked=True)
                if self._free is not None:
                    self._free -= len(parts)
            else:
                db.execute(
                    "INSERT INTO bindings (binding_id, body, acked, created)"
                    " VALUES (?, '{}', ?, ?)",
                    (binding.binding_id, _CANCELLED, self._clock()),
                )
        if refused is not None:
            raise refused
        return []

    def _over_quota(
        self, db: sqlite3.Connection, master: str, slave: str, needed: int
    ) -> QuotaExceeded | None:
        """The quota ``needed`` more bound pool keys for (master, slave) would exceed, if any.

        Expired bindings of ``master`` are destroyed first, so they never count.
        """
        self._expire(db, self._clock(), master=master)
        limits = self.binding_limits
        (pair,) = db.execute(
            "SELECT COUNT(*) FROM keys WHERE master_sae = ? AND slave_sae = ?", (master, slave)
        ).fetchone()
        if pair + needed > limits.per_pair:
            return QuotaExceeded("per_pair", master=master, slave=slave, bound=pair,
                                 requested=needed, limit=limits.per_pair)
        (total,) = db.execute(
            "SELECT COUNT(*) FROM keys WHERE master_sae = ?", (master,)
        ).fetchone()
        if total + needed > limits.per_master:
            return QuotaExceeded("per_master", master=master, slave=slave, bound=total,
                                 requested=needed, limit=limits.per_master)
        return None

    def _store_binding(
        self, db: sqlite3.Connection, binding: Binding, *, local_kme: str, acked: bool
    ) -> None:
        role = "master" if binding.master_kme == local_kme else "slave"
        db.executemany(
            "UPDATE keys SET bound_to = ?, part = ?, size_bits = ?, master_sae = ?,"
            " slave_sae = ?, role = ?, binding_id = ? WHERE key_id = ?",
            [(key.key_ID, index, key.size_bits, binding.master_SAE_ID, binding.slave_SAE_ID,
              role, binding.binding_id, part)
             for key in binding.keys for index, part in enumerate(key.parts)],
        )
        db.execute(
            "INSERT INTO bindings (binding_id, body, acked, created) VALUES (?, ?, ?, ?)",
            (binding.binding_id, json.dumps(binding.to_json()), int(acked), self._clock()),
        )

    def unacked_bindings(self) -> list[tuple[Binding, float]]:
        """Allocator side: bindings the peer KME has not confirmed yet, with creation times."""
        rows = self._db.execute(
            "SELECT body, created FROM bindings WHERE acked = 0 ORDER BY created"
        ).fetchall()
        return [(Binding.from_json(json.loads(r[0])), float(r[1])) for r in rows]

    def cancel_binding(self, binding_id: str) -> bool:
        """Follower side: refuse ``binding_id`` for ever, unless it is already applied.

        Returns True when it is now cancelled (the allocator may free its keys), False when
        it had been applied (the allocator must treat it as acknowledged instead).
        """
        binding_id = _uuid_text(binding_id)
        with self._write() as db:
            row = db.execute(
                "SELECT acked FROM bindings WHERE binding_id = ?", (binding_id,)
            ).fetchone()
            if row is not None:
                return bool(row[0] == _CANCELLED)
            db.execute(
                "INSERT INTO bindings (binding_id, body, acked, created) VALUES (?, '{}', ?, ?)",
                (binding_id, _CANCELLED, self._clock()),
            )
        return True

    def mark_acked(self, binding_id: str) -> None:
        with self._write() as db:
            db.execute("UPDATE bindings SET acked = 1 WHERE binding_id = ?", (binding_id,))

    def drop_unshared(self, binding_id: str, missing: Sequence[str]) -> None:
        """Allocator side: the peer never received ``missing`` (a crash mid-batch on its side).

        Those pool keys can never be shared, so they are deleted here (journalled as
        delivered to nobody) and the rest of the binding goes back to the free keys. Only
        after the follower has cancelled the binding (:meth:`cancel_binding`), so it can
        never apply it later.
        """
        with self._write() as db:
            row = db.execute(
                "SELECT acked FROM bindings WHERE binding_id = ?", (binding_id,)
            ).fetchone()
            if row is None or row[0]:
                return
            db.execute(
                "UPDATE keys SET bound_to = NULL, part = NULL, size_bits = NULL,"
                " master_sae = NULL, slave_sae = NULL, role = NULL, binding_id = NULL"
                " WHERE binding_id = ?",
                (binding_id,),
            )
            db.execute("DELETE FROM bindings WHERE binding_id = ?", (binding_id,))
            self._deliver(db, [(m, None) for m in missing], "(unshared)")
        self._free = None  # the rest of the binding is free again

    # -- delivery -------------------------------------------------------------------------

    def ready_count(self, master: str, slave: str, size_bits: int) -> int:
        """Delivered keys bound to (master, slave) at this master KME, confirmed by the peer
        and not expired."""
        (count,) = self._db.execute(
            "SELECT COUNT(*) FROM keys k JOIN bindings b ON b.binding_id = k.binding_id"
            " WHERE k.master_sae = ? AND k.slave_sae = ? AND k.role = 'master'"
            " AND k.size_bits = ? AND k.part = 0 AND b.acked = 1 AND b.created > ?",
            (master, slave, size_bits, self._clock() - self.binding_limits.ttl_s),
        ).fetchone()
        return int(count)

    def take_bound_for_master(
        self, master: str, slave: str, size_bits: int, number: int
    ) -> list[PoolKey]:
        """enc_keys: give ``number`` confirmed keys of (master, slave) to master, all or none."""
        with self._write() as db:
            self._expire(db, self._clock(), master=master, slave=slave)
            heads = db.execute(
                "SELECT k.bound_to FROM keys k JOIN bindings b ON b.binding_id = k.binding_id"
                " WHERE k.master_sae = ? AND k.slave_sae = ? AND k.role = 'master'"
                " AND k.size_bits = ? AND k.part = 0 AND b.acked = 1 ORDER BY k.seq LIMIT ?",
                (master, slave, size_bits, number),
            ).fetchall()
            if len(heads) < number:
                raise PoolExhausted(number, len(heads))
            return self._take_bound(db, [h[0] for h in heads], master)

    def take_for_slave(self, master: str, slave: str, key_ids: Sequence[str], *,
                       redeliverable: bool = True) -> list[PoolKey]:
        """dec_keys: hand the named keys to the slave, only if all are bound to (master, slave).

        A key this slave already fetched (same master) less than ``redelivery_grace_s`` ago
        is served again, with the same bytes; to anybody else it is unknown, as any
        delivered key (see the module docstring). All or nothing. ``redeliverable=False``
        keeps no copy for that (a trusted node claiming a relay hop's link keys for itself:
        no answer of it can be lost on the way, and a repeated claim is a replay).
        """
        now = self._clock()
        with self._write() as db:
            self._sweep(db, now)
            self._expire(db, now, master=master, slave=slave)
            unknown, foreign, fresh = [], [], []
            held = {r[0]: tuple(r[1:]) for r in _select_in(
                db, "SELECT bound_to, master_sae, slave_sae, role FROM keys"
                " WHERE part = 0 AND bound_to IN", key_ids)}
            kept = dict(_select_in(
                db, "SELECT key_id, material FROM redeliverable"
                " WHERE master_sae = ? AND slave_sae = ? AND key_id IN",
                [k for k in key_ids if k not in held], master, slave))
            again: dict[str, bytes] = {}
            named: set[str] = set()
            for key_id in key_ids:
                if key_id in named:  # named twice: the first takes it, this one is gone
                    unknown.append(key_id)
                    continue
                named.add(key_id)
                row = held.get(key_id)
                if row is None:
                    if key_id in kept:
                        again[key_id] = kept[key_id]
                    else:
                        unknown.append(key_id)
                elif row != (master, slave, "slave"):
                    foreign.append(key_id)
                else:
                    fresh.append(key_id)
            if unknown or foreign:
                raise KeyLookupError(unknown, foreign)
            taken = {k.key_ID: k for k in self._take_bound(db, fresh, slave)}
            if self.redelivery_grace_s > 0 and redeliverable:
                db.executemany(
                    "INSERT INTO redeliverable (key_id, master_sae, slave_sae, material, at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(k.key_ID, master, slave, k.key, now) for k in taken.values()],
                )
        return [taken[k] if k in taken else PoolKey(k, again[k]) for k in key_ids]

    def sweep_redeliverable(self) -> int:
        """Erase the material of dec_keys answers whose grace is over; return how many."""
        with self._write() as db:
            return self._sweep(db, self._clock())

    def _sweep(self, db: sqlite3.Connection, now: float) -> int:
        # <= : with a grace of 0 nothing is kept, not even rows of an earlier, longer grace.
        cursor = db.execute(
            "DELETE FROM redeliverable WHERE at <= ?", (now - self.redelivery_grace_s,)
        )
        return cursor.rowcount

    def next_redelivery_expiry(self) -> float | None:
        """When the oldest kept dec_keys answer is due for erasure (wall clock), or None."""
        (oldest,) = self._db.execute("SELECT MIN(at) FROM redeliverable").fetchone()
        return None if oldest is None else float(oldest) + self.redelivery_grace_s

    def expire_bindings(self) -> int:
        """Destroy the keys of bindings left unfetched past ``ttl_s``; return how many."""
        with self._write() as db:
            return self._expire(db, self._clock())

    def _expire(
        self, db: sqlite3.Connection, now: float, *, master: str | None = None,
        slave: str | None = None,
    ) -> int:
        """Delete (and journal) the bound keys of bindings older than the lifetime.

        ``master`` / ``slave`` narrow the search to one master or pair (index ``keys_pair``),
        so the enc_keys and dec_keys paths never scan other SAEs' keys. A binding the peer has
        not confirmed yet (``acked = 0``, allocator only) waits: destroying it here while the
        follower may still apply it would strand the follower's copies as free keys it can
        never share. Once pushed, it expires at once here and a lifetime later there.
        """
        cutoff = now - self.binding_limits.ttl_s
        if master is None:
            # Every binding still holding keys (index keys_binding), looked up by its key.
            rows = db.execute(
                "SELECT k.key_id, k.bound_to FROM keys k WHERE k.binding_id IN"
                " (SELECT binding_id FROM bindings WHERE acked != 0 AND created <= ?"
                "  AND binding_id IN (SELECT DISTINCT binding_id FROM keys"
                "   WHERE binding_id IS NOT NULL))",
                (cutoff,),
            ).fetchall()
        else:
            pair, args = "k.master_sae = ?", [master]
            if slave is not None:
                pair += " AND k.slave_sae = ?"
                args.append(slave)
            rows = db.execute(
                "SELECT k.key_id, k.bound_to FROM keys k"
                " JOIN bindings b ON b.binding_id = k.binding_id"
                f" WHERE {pair} AND b.acked != 0 AND b.created <= ?",
                (*args, cutoff),
            ).fetchall()
        if not rows:
            return 0
        self._deliver(db, [(r[0], r[1]) for r in rows], EXPIRED_SAE)
        return len(rows)

    def next_binding_expiry(self) -> float | None:
        """When the oldest binding still holding unfetched keys expires (wall clock), or None."""
        (oldest,) = self._db.execute(
            "SELECT MIN(created) FROM bindings WHERE acked != 0 AND binding_id IN"
            " (SELECT DISTINCT binding_id FROM keys WHERE binding_id IS NOT NULL)"
        ).fetchone()
        return None if oldest is None else float(oldest) + self.binding_limits.ttl_s

    def _take_bound(self, db: sqlite3.Connection, heads: Sequence[str], sae: str) -> list[PoolKey]:
        """Assemble the keys headed by ``heads`` (distinct) from their parts; deliver them."""
        parts: dict[str, list[tuple[str, bytes, int]]] = {head: [] for head in heads}
        for key_id, material, size_bits, head in _select_in(
                db, "SELECT key_id, material, size_bits, bound_to FROM keys WHERE bound_to IN",
                heads, order="ORDER BY bound_to, part"):
            parts[head].append((key_id, material, size_bits))
        out = []
        for head in heads:
            rows = parts[head]
            out.append(PoolKey(head, assemble([r[1] for r in rows], rows[0][2])))
        self._deliver(db, [(r[0], head) for head in heads for r in parts[head]], sae)
        return out

    def _deliver(
        self, db: sqlite3.Connection, keys: Sequence[tuple[str, str | None]], sae: str
    ) -> None:
        now = self._clock()
        db.executemany("DELETE FROM keys WHERE key_id = ?", [(key_id,) for key_id, _ in keys])
        db.executemany(
            "INSERT OR IGNORE INTO delivered (key_id, bound_to, sae, at) VALUES (?, ?, ?, ?)",
            [(key_id, head, sae, now) for key_id, head in keys],
        )

    # -- inspection -----------------------------------------------------------------------

    def stats(self) -> PoolStats:
        row = self._db.execute(
            "SELECT COUNT(*),"
            " COALESCE(SUM(bound_to IS NULL), 0),"
            " COALESCE(SUM(role = 'master'), 0),"
            " COALESCE(SUM(role = 'slave'), 0)"
            " FROM keys"
        ).fetchone()
        (delivered,) = self._db.execute("SELECT COUNT(*) FROM delivered").fetchone()
        (redeliverable,) = self._db.execute("SELECT COUNT(*) FROM redeliverable").fetchone()
        return PoolStats(
            stored=row[0],
            free=row[1],
            bound_master=row[2],
            bound_slave=row[3],
            delivered=delivered,
            max_key_count=self.max_key_count,
            redeliverable=redeliverable,
        )

    def free_count(self) -> int:
        """Keys not yet promised to anybody (counted once, then kept up to date; counted
        again after another connection changed the file, e.g. a test filling the pool)."""
        (version,) = self._db.execute("PRAGMA data_version").fetchone()
        if self._free is None or version != self._data_version:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM keys WHERE bound_to IS NULL").fetchone()
            self._free, self._data_version = int(count), version
        return self._free

    def free_key_ids(self) -> set[str]:
        """The key_IDs of free keys (no key material)."""
        return {r[0] for r in self._db.execute("SELECT key_id FROM keys WHERE bound_to IS NULL")}

    def discard_free(self, key_ids: Iterable[str]) -> int:
        """Destroy these keys if they are still free (journalled ``(unpaired)``, so a link
        batch can never bring them back); return how many were destroyed."""
        with self._write() as db:
            free = [r[0] for key_id in key_ids for r in db.execute(
                "SELECT key_id FROM keys WHERE key_id = ? AND bound_to IS NULL", (key_id,))]
            self._deliver(db, [(key_id, None) for key_id in free], UNPAIRED_SAE)
        if self._free is not None:
            self._free -= len(free)
        return len(free)

    def key_ids(self) -> set[str]:
        """Every pool key_ID still held (tests and audits; no key material)."""
        return {r[0] for r in self._db.execute("SELECT key_id FROM keys")}

    def delivered_ids(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT key_id FROM delivered")}

    def redeliverable_ids(self) -> set[str]:
        """key_IDs whose dec_keys answer is still kept for their SAE (no key material)."""
        return {r[0] for r in self._db.execute("SELECT key_id FROM redeliverable")}
