"""One KME: its pool, its ETSI operations, and how it agrees with its peer KME on who gets what.

How the two KMEs of a link agree (the *binding* protocol)
---------------------------------------------------------
Both pools receive the same keys from the link. The link's ``alice`` end is the
**allocator**: it alone turns free keys into bindings ("these key_IDs belong to master SAE
M and slave SAE S, and M fetches them at KME X"). The ``bob`` end is the **follower**: it
applies the allocator's bindings to its own pool. Because only one side ever allocates,
the two pools can never promise the same key to two pairs, whichever side the master is on.

enc_keys from master M for slave S at the allocator:
  1. bind N free keys to (M, S, master at allocator) - one transaction;
  2. push the binding to the follower (``POST /kme/v1/bindings`` over mutual TLS, or a direct
     call in pair mode); the follower applies it in one transaction and says so;
  3. mark it acknowledged, then hand the keys to M and delete them - one transaction.
enc_keys at the follower:
  1. ask the allocator to bind N keys to (M, S, master at follower) (``POST /kme/v1/allocate``);
  2. apply that binding locally, hand the keys to M and delete them.
dec_keys from slave S with master M (at either KME): hand out exactly the named keys if each
is bound to (M, S) with S on this side, and delete them; anything else is refused. S alone may
fetch them again for a grace period, in case its answer was lost (see :mod:`.pool`);
:meth:`KmeNode.run_sweeper` erases them when it ends.

Which SAEs keys may be bound to
-------------------------------
enc_keys binds keys only for a slave SAE this KME knows to be reachable: one registered here
(its :class:`SaeRegistry`: in a deployment, an SAE certificate issued by the KMEs' CA, see
:class:`keysource.kme.pki.PkiSaeRegistry`) or registered at the peer KME, which answers
``GET /kme/v1/saes/{SAE_ID}`` over the KME-to-KME channel (a yes is remembered for
``peer_sae_cache_s``). Anything else is a 400 naming the slave, before any key is touched. The
allocator checks again when a follower asks it to allocate. Quotas on unfetched bound keys and
their expiry are enforced by the pool (:class:`keysource.kme.pool.BindingLimits`): a binding over
quota at the allocator or at the follower is refused whole, and the keys the allocator had
reserved for it go back to the free keys; :meth:`KmeNode.run_sweeper` destroys expired bindings.

Two SAEs at one KME (a KME of a pair)
-------------------------------------
A pair's KME serves any number of SAEs (:class:`keysource.kme.served_saes.ServedSaes`: its
default SAE and every enrolled SAE that has called it). enc_keys for a slave served by this
very KME takes no link key: a fresh key from the KME's random source goes into its own key
store (:class:`keysource.kme.relay_store.LocalKeyStore`, durably, before the master gets it),
bound to (M, S); S fetches it here with dec_keys, once. A slave enrolled but served by neither
KME yet is a 503 saying so: binding its keys to either side could strand them. An SAE that
calls the other KME of the pair (its profile was pointed there) moves: that KME tells this one
(``POST /kme/v1/served``, :meth:`KmeNode.called_by`), which stops serving it, so its keys are
not handed out of a store it no longer fetches from.

Crashes: every step is a durable transaction and every message is idempotent (bindings are
named by a UUID), so after a crash the allocator simply pushes unacknowledged bindings again
(a background loop does so every second). Keys bound for (M, S) whose enc_keys call failed
midway are not lost: they are handed to M on its next enc_keys for S with the same size.
The master's keys are only released after the peer holds the binding, so the slave can
always fetch what the master got.

If a crash made the follower miss a link batch, a binding naming those keys can never be
applied. After ``unshared_after_s`` the allocator cancels it at the follower
(``POST /kme/v1/cancel``; the follower then refuses it for ever), discards the keys the
follower never got and frees the rest of the binding for reuse.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from . import etsi
from .pool import (
    Binding,
    BindingConflict,
    KeyLookupError,
    KeyPool,
    PoolExhausted,
    PoolKey,
    QuotaExceeded,
    parts_for_size,
)

if TYPE_CHECKING:
    from .relay_store import LocalKeyStore
    from .served_saes import ServedSaes

log = logging.getLogger(__name__)

# How long an SAE's first call at a KME waits for the peer KME to hear that it is served here
# (loopback or LAN: milliseconds; a peer that is down costs an SAE this once, and later
# tries run in the background).
ANNOUNCE_WAIT_S = 2.0
ANNOUNCE_RETRY_S = 30.0  # after the peer could not be told, before the next try
T = TypeVar("T")


class PeerUnavailable(Exception):
    """The peer KME could not be reached or answered with an error."""


class SaeRegistry(Protocol):
    """Which SAE_IDs are registered at this KME (may fetch keys here)."""

    def knows(self, sae_id: str) -> bool:
        """True if ``sae_id`` is a registered SAE here (cheap: called on every enc_keys)."""
        ...


class StaticSaeRegistry:
    """A fixed set of SAE_IDs (tests, and KMEs configured by list)."""

    def __init__(self, sae_ids: Sequence[str]) -> None:
        self.sae_ids = frozenset(sae_ids)

    def knows(self, sae_id: str) -> bool:
        return sae_id in self.sae_ids


class PeerChannel(Protocol):
    """How a KME reaches its peer: in-process (pair mode) or HTTPS with mutual TLS."""

    async def push_binding(self, binding: Binding) -> list[str]:
        """Ask the follower to apply ``binding``; return pool key_IDs it does not hold yet."""
        ...

    async def allocate(
        self, *, binding_id: str, master: str, slave: str, sizes: Sequence[int]
    ) -> Binding:
        """Ask the allocator to bind keys for a master on the follower's side."""
        ...

    async def cancel_binding(self, binding_id: str) -> bool:
        """Ask the follower to refuse a binding for ever; False if it had already applied it."""
        ...

    async def knows_sae(self, sae_id: str) -> bool:
        """Ask the peer KME whether ``sae_id`` is an SAE registered there."""
        ...

    async def serves_sae(self, sae_id: str) -> None:
        """Tell the peer KME that this KME serves ``sae_id`` now (it stops serving it)."""
        ...


class LocalPeer:
    """Pair mode: both KMEs live in one process, so the peer is called directly."""

    def __init__(self, node: KmeNode) -> None:
        self.node = node

    async def push_binding(self, binding: Binding) -> list[str]:
        try:
            return await self.node.handle_push(binding)
        except BindingConflict as exc:
            raise PeerUnavailable(str(exc)) from None

    async def allocate(
        self, *, binding_id: str, master: str, slave: str, sizes: Sequence[int]
    ) -> Binding:
        return await self.node.handle_allocate(
            binding_id=binding_id, master=master, slave=slave, sizes=sizes
        )

    async def cancel_binding(self, binding_id: str) -> bool:
        return await self.node.handle_cancel(binding_id)

    async def knows_sae(self, sae_id: str) -> bool:
        return self.node.handle_knows_sae(sae_id)

    async def serves_sae(self, sae_id: str) -> None:
        self.node.handle_peer_serves(sae_id)


class KmeNode:
    """ETSI 014 operations over one pool, coordinated with the peer KME (see module doc)."""

    def __init__(
        self,
        *,
        kme_id: str,
        peer_kme_id: str,
        pool: KeyPool,
        allocator: bool,
        saes: SaeRegistry,
        limits: etsi.Limits | None = None,
        peer: PeerChannel | None = None,
        arrival_wait_s: float = 3.0,
        unshared_after_s: float = 60.0,
        peer_sae_cache_s: float = 60.0,
        served: ServedSaes | None = None,
        own_keys: LocalKeyStore | None = None,
    ) -> None:
        self.kme_id = kme_id
        self.peer_kme_id = peer_kme_id
        self.pool = pool
        self.allocator = allocator
        self.limits = limits or etsi.Limits()
        self.peer = peer
        self.arrival_wait_s = arrival_wait_s
        self.unshared_after_s = unshared_after_s
        self.saes = saes
        # A KME of a pair (not a network link): the SAEs it serves, and its own key store
        # for two of them (see "Two SAEs at one KME" in the module doc).
        if (served is None) != (own_keys is None):
            raise ValueError("a KME of a pair needs both its served SAEs and its own key store")
        self.served = served
        self.own_keys = own_keys
        self.counts = {"own": 0}
        self.peer_sae_cache_s = peer_sae_cache_s
        self._peer_saes: dict[str, float] = {}  # SAE_IDs the peer confirmed -> until (monotonic)
        # All pool access runs on one worker thread: SQLite calls (with fsync) never block
        # the event loop, and the single connection is never used from two threads.
        self._db_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"pool-{kme_id}"
        )
        self._pair_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._announcing: dict[str, asyncio.Task[None]] = {}  # SAE_ID -> telling the peer
        self._announce_retry: dict[str, float] = {}  # SAE_ID -> next try (monotonic)
        self._room = pool.room()
        self.on_keys_added: list[Callable[[int], None]] = []
        self.on_redeliverable_erased: list[Callable[[int], None]] = []
        self.on_bindings_expired: list[Callable[[int], None]] = []

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self._db_thread, functools.partial(fn, *args, **kwargs)
        )
        return result

    def close(self) -> None:
        self._db_thread.shutdown(wait=True)
        self.pool.close()
        if self.own_keys is not None:
            self.own_keys.close()
        if self.served is not None:
            self.served.close()

    async def called_by(self, sae_id: str) -> None:
        """An authenticated SAE called this KME: a KME of a pair serves it from now on.

        If it was served at the peer KME (its profile now names this one), the peer must
        stop, or the peer would keep handing keys for it out of its own store. So the peer
        is told, and the SAE's first call waits for that up to ``ANNOUNCE_WAIT_S``. With
        the peer unreachable the call goes on, and a later call of that SAE (after
        ``ANNOUNCE_RETRY_S``) tries again in the background, so a peer that is down slows
        no SAE twice.
        """
        if self.served is None or not self.served.called_by(sae_id) or self.peer is None:
            return
        retry_at = self._announce_retry.get(sae_id)
        if sae_id in self._announcing or (retry_at is not None
                                          and time.monotonic() < retry_at):
            return
        task = asyncio.create_task(self._announce(sae_id))
        self._announcing[sae_id] = task
        task.add_done_callback(lambda _: self._announcing.pop(sae_id, None))
        if retry_at is None:
            await asyncio.wait({task}, timeout=ANNOUNCE_WAIT_S)

    async def _announce(self, sae_id: str) -> None:
        assert self.peer is not None and self.served is not None
        try:
            await self.peer.serves_sae(sae_id)
        except PeerUnavailable as exc:
            self._announce_retry[sae_id] = time.monotonic() + ANNOUNCE_RETRY_S
            log.warning("could not tell peer KME %s that %s is served here now (%s); "
                        "will try again on a later call of that SAE", self.peer_kme_id,
                        sae_id, exc)
            return
        self._announce_retry.pop(sae_id, None)
        self.served.announced(sae_id)

    def handle_peer_serves(self, sae_id: str) -> bool:
        """Peer-facing: ``sae_id`` is served at the peer KME now; True if it was here."""
        if self.served is None or not self.served.knows(sae_id):
            return False
        self.served.forget(sae_id)
        log.info("SAE %s moved to peer KME %s", sae_id, self.peer_kme_id)
        return True

    def _serves_here(self, sae_id: str) -> bool:
        """Does this KME of a pair serve ``sae_id`` itself (keys from its own store)?"""
        return self.served is not None and self.served.knows(sae_id)

    # -- the link side ------------------------------------------------------------------

    def room(self) -> int:
        """How many more keys the pool takes (cached; refreshed after every change)."""
        return self._room

    async def add_keys(self, batch: Sequence[tuple[str, bytes]], *,
                       link_state: tuple[str, bytes] | None = None) -> int:
        """Store link keys (with the link's state in the same transaction, if given)."""
        added = await self._db(self.pool.add_keys, batch, link_state=link_state)
        if batch:
            await self._refresh_room()
            for callback in self.on_keys_added:
                callback(added)
        return added

    async def link_state(self, name: str) -> bytes | None:
        return await self._db(self.pool.link_state, name)

    async def free_key_ids(self) -> set[str]:
        return await self._db(self.pool.free_key_ids)

    async def discard_free(self, key_ids: set[str]) -> int:
        discarded = await self._db(self.pool.discard_free, sorted(key_ids))
        await self._refresh_room()
        return discarded

    async def _refresh_room(self) -> None:
        self._room = await self._db(self.pool.room)

    # -- ETSI operations ----------------------------------------------------------------

    async def check_reachable(self, slave: str) -> None:
        """Refuse (400) a slave SAE registered neither here nor at the peer KME."""
        if self.saes.knows(slave):
            return
        until = self._peer_saes.get(slave)
        if until is not None and until > time.monotonic():
            return
        if self.peer is not None:
            try:
                known = await self.peer.knows_sae(slave)
            except PeerUnavailable as exc:
                raise etsi.Unavailable(
                    f"cannot ask the peer KME whether slave_SAE_ID {slave} is registered there",
                    [{"peer_KME_ID": self.peer_kme_id, "reason": str(exc)}],
                ) from None
            if known:
                self._peer_saes[slave] = time.monotonic() + self.peer_sae_cache_s
                return
        if self.served is not None and self.served.is_enrolled(slave):
            raise etsi.Unavailable(
                f"slave_SAE_ID {slave} has a certificate but has not called either KME of "
                f"this pair ({self.kme_id}, {self.peer_kme_id}) yet, so neither knows which "
                "of them serves it: an SAE is served by the KME it calls (status, enc_keys, "
                "dec_keys or stats). Retry once it has; no key was bound",
                [{"slave_SAE_ID": slave, "registered": True, "served_by": None}])
        raise etsi.BadRequest(
            f"unknown slave_SAE_ID {slave}: no SAE with this ID is registered at this KME "
            f"({self.kme_id}) or at its peer KME ({self.peer_kme_id})",
            [{"slave_SAE_ID": slave, "registered": False}],
        )

    def handle_knows_sae(self, sae_id: str) -> bool:
        """Peer-facing: is ``sae_id`` registered at this KME (not asking any further)?"""
        return self.saes.knows(sae_id)

    async def status(self, master: str, slave: str) -> dict[str, Any]:
        await self.called_by(master)
        if self._serves_here(slave) and master != slave:
            return etsi.status_body(
                source_kme=self.kme_id, target_kme=self.kme_id, master=master, slave=slave,
                stored_key_count=self.limits.max_key_per_request,
                max_key_count=self.limits.max_key_per_request, limits=self.limits)
        await self.check_reachable(slave)
        free = await self._db(self.pool.free_count)
        ready = await self._db(self.pool.ready_count, master, slave, self.limits.key_size)
        return etsi.status_body(
            source_kme=self.kme_id,
            target_kme=self.peer_kme_id,
            master=master,
            slave=slave,
            stored_key_count=free // parts_for_size(self.limits.key_size) + ready,
            max_key_count=self.pool.max_key_count // parts_for_size(self.limits.key_size),
            limits=self.limits,
        )

    def _lock(self, master: str, slave: str) -> asyncio.Lock:
        return self._pair_locks.setdefault((master, slave), asyncio.Lock())

    async def enc_keys(
        self, master: str, slave: str, request: etsi.EncKeysRequest
    ) -> list[PoolKey]:
        """Keys for master SAE ``master`` to share with ``slave`` (who fetches them at the peer)."""
        if master == slave:
            raise etsi.BadRequest("slave_SAE_ID must differ from the caller's SAE_ID")
        await self.called_by(master)
        if self._serves_here(slave):
            return await self._own_keys_for(master, slave, request)
        if self.peer is None:
            raise etsi.Unavailable("this KME is not connected to a peer KME")
        await self.check_reachable(slave)
        keys = await self.bind_and_take(master, slave, request.number, request.size)
        log.info("enc_keys: %d key(s) of %d bits for %s -> %s", request.number, request.size,
                 master, slave)
        # Bound with this KME as the master's: the slave fetches them at the peer KME.
        return [replace(k, path=(self.kme_id, self.peer_kme_id)) for k in keys]

    async def _own_keys_for(self, master: str, slave: str,
                            request: etsi.EncKeysRequest) -> list[PoolKey]:
        """Both SAEs at this KME of a pair: fresh keys from its random source, stored for
        the slave (durably, before the master gets them), never touching the link's pool."""
        assert self.own_keys is not None
        keys = [PoolKey(str(uuid.uuid4()), os.urandom(request.size // 8), (self.kme_id,))
                for _ in range(request.number)]
        await self._db(self.own_keys.put, master, slave, keys)
        self.counts["own"] += len(keys)
        log.info("enc_keys: %d key(s) of %d bits for %s -> %s, both at %s", request.number,
                 request.size, master, slave, self.kme_id)
        return keys

    def link_for(self, kme_id: str) -> KmeNode | None:
        """The link (this node) whose peer KME is ``kme_id``, or None: who may call the
        KME-to-KME routes."""
        return self if kme_id == self.peer_kme_id else None

    async def bind_and_take(self, master: str, slave: str, number: int,
                            size: int, *, reserve: int = 0) -> list[PoolKey]:
        """Bind (through the allocator) and take ``number`` keys of ``size`` bits for
        master ``master`` here and ``slave`` at the peer, who fetches them by key_ID.

        enc_keys after its checks; a network node draws the pads and MAC keys of a relay hop
        with it (keysource.kme.network_node), binding ``reserve`` more whenever it must bind,
        so most hops take keys already bound and skip the round trip to the peer.
        """
        if self.peer is None:
            raise etsi.Unavailable("this KME is not connected to a peer KME")
        binding = False  # only binding changes the free keys (taking bound ones does not)
        try:
            async with self._lock(master, slave):
                try:  # keys bound ahead (a reserve), if there are enough: one step
                    return await self._db(
                        self.pool.take_bound_for_master, master, slave, size, number)
                except PoolExhausted as exc:
                    count = number - exc.available
                # The reserve only from a pool with plenty left for everybody else.
                if reserve and await self._db(self.pool.free_count) >= count + 2 * reserve:
                    count += reserve
                binding = True
                if self.allocator:
                    await self._bind_here(master, slave, size, count)
                else:
                    await self._bind_at_allocator(master, slave, size, count)
                try:
                    keys = await self._db(
                        self.pool.take_bound_for_master, master, slave, size, number)
                except PoolExhausted as exc:  # pragma: no cover - guarded by the steps above
                    raise etsi.Unavailable(
                        "keys could not be reserved", [{"reason": str(exc)}]
                    ) from None
        finally:  # bound (or bound and freed again): the free keys changed, and the room
            if binding:
                await self._refresh_room()
        return keys

    async def free_count(self) -> int:
        return await self._db(self.pool.free_count)

    async def _bind_here(self, master: str, slave: str, size: int, count: int) -> None:
        assert self.peer is not None
        try:
            binding = await self._db(
                self.pool.bind,
                binding_id=str(uuid.uuid4()),
                master_SAE_ID=master,
                slave_SAE_ID=slave,
                master_kme=self.kme_id,
                local_kme=self.kme_id,
                sizes=[size] * count,
            )
        except PoolExhausted as exc:
            raise _not_enough(exc, size) from None
        except QuotaExceeded as exc:
            raise over_quota(exc) from None
        deadline = time.monotonic() + self.arrival_wait_s
        while True:
            try:
                missing = await self.peer.push_binding(binding)
            except QuotaExceeded as exc:
                # The follower cancelled it for ever: these keys are free again.
                await self._db(self.pool.drop_unshared, binding.binding_id, [])
                raise over_quota(exc) from None
            except PeerUnavailable as exc:
                raise etsi.Unavailable(
                    "the peer KME is unreachable; the reserved keys are kept for your next request",
                    [{"peer_KME_ID": self.peer_kme_id, "reason": str(exc)}],
                ) from None
            if not missing:
                await self._db(self.pool.mark_acked, binding.binding_id)
                return
            if time.monotonic() > deadline:
                raise etsi.Unavailable(
                    "the peer KME has not received these keys from the link yet",
                    [{"peer_KME_ID": self.peer_kme_id, "missing": len(missing)}],
                )
            await asyncio.sleep(0.05)

    async def _bind_at_allocator(self, master: str, slave: str, size: int, count: int) -> None:
        assert self.peer is not None
        try:
            binding = await self.peer.allocate(
                binding_id=str(uuid.uuid4()), master=master, slave=slave, sizes=[size] * count
            )
        except PoolExhausted as exc:
            raise _not_enough(exc, size) from None
        except QuotaExceeded as exc:
            raise over_quota(exc) from None
        except UnknownSae as exc:
            raise etsi.BadRequest(str(exc), [{"slave_SAE_ID": exc.sae_id}]) from None
        except PeerUnavailable as exc:
            raise etsi.Unavailable(
                "the peer KME is unreachable",
                [{"peer_KME_ID": self.peer_kme_id, "reason": str(exc)}],
            ) from None
        deadline = time.monotonic() + self.arrival_wait_s
        try:
            while await self.handle_push(binding):
                if time.monotonic() > deadline:
                    raise etsi.Unavailable(
                        "this KME has not received the allocated keys from the link yet; retry"
                    )
                await asyncio.sleep(0.05)
        except BindingConflict as exc:
            raise etsi.Unavailable(
                "the KMEs disagree about these keys; retry", [{"reason": str(exc)}]
            ) from None

    async def dec_keys(self, master: str, slave: str, key_ids: Sequence[str], *,
                       redeliverable: bool = True) -> list[PoolKey]:
        """The keys ``master`` obtained for slave SAE ``slave``, handed to ``slave`` once
        (``redeliverable``: see :meth:`KeyPool.take_for_slave`)."""
        await self.called_by(slave)
        if self.own_keys is not None and await self._db(self.own_keys.holds_any,
                                                        list(key_ids)):
            try:
                own = await self._db(self.own_keys.take_for_slave, master, slave,
                                     list(key_ids))
            except KeyLookupError as exc:
                raise lookup_error(exc) from None
            log.info("dec_keys: %d key(s) for %s from %s (this KME's own store)", len(own),
                     slave, master)
            return own
        try:
            # Bound keys only: the free keys, and so the room, stay as they were.
            keys = await self._db(self.pool.take_for_slave, master, slave, key_ids,
                                  redeliverable=redeliverable)
        except KeyLookupError as exc:
            raise lookup_error(exc) from None
        log.info("dec_keys: %d key(s) for %s from %s", len(keys), slave, master)
        # A slave takes only keys bound at the peer KME (role "slave"): made on this link.
        return [replace(k, path=(self.peer_kme_id, self.kme_id)) for k in keys]

    # -- peer-facing ----------------------------------------------------------------------

    async def handle_push(self, binding: Binding) -> list[str]:
        """Follower: apply a binding from the allocator; return pool keys not here yet."""
        if self.allocator:
            raise BindingConflict("this KME is the allocator; it does not accept bindings")
        missing = await self._db(self.pool.apply_binding, binding, local_kme=self.kme_id)
        await self._refresh_room()
        return missing

    async def handle_allocate(
        self, *, binding_id: str, master: str, slave: str, sizes: Sequence[int]
    ) -> Binding:
        """Allocator: bind keys for a master SAE that fetches at the follower.

        The slave fetches here, so it must be registered here (:class:`UnknownSae`).
        """
        if not self.allocator:
            raise BindingConflict("this KME is not the allocator")
        if not self.saes.knows(slave):
            raise UnknownSae(slave, self.kme_id)
        binding = await self._db(
            self.pool.bind,
            binding_id=binding_id,
            master_SAE_ID=master,
            slave_SAE_ID=slave,
            master_kme=self.peer_kme_id,
            local_kme=self.kme_id,
            sizes=sizes,
        )
        await self._refresh_room()
        return binding

    async def handle_cancel(self, binding_id: str) -> bool:
        """Follower: refuse a binding for ever (its keys never all reached this pool)."""
        if self.allocator:
            raise BindingConflict("this KME is the allocator; it has nothing to cancel")
        return await self._db(self.pool.cancel_binding, binding_id)

    async def push_pending(self) -> int:
        """Allocator: push every unacknowledged binding once; return how many were settled.

        A binding whose keys the follower still lacks ``unshared_after_s`` after it was made
        (a crash lost a link batch on its side) is cancelled at the
        follower, then its missing keys are discarded here and the rest freed for reuse.
        """
        if not self.allocator or self.peer is None:
            return 0
        settled = 0
        for binding, created in await self._db(self.pool.unacked_bindings):
            try:
                try:
                    missing = await self.peer.push_binding(binding)
                except QuotaExceeded as exc:
                    await self._db(self.pool.drop_unshared, binding.binding_id, [])
                    await self._refresh_room()
                    log.warning("binding %s refused by %s: %s", binding.binding_id,
                                self.peer_kme_id, exc)
                    settled += 1
                    continue
                if not missing:
                    await self._db(self.pool.mark_acked, binding.binding_id)
                    settled += 1
                elif time.time() - created > self.unshared_after_s:
                    if await self.peer.cancel_binding(binding.binding_id):
                        await self._db(self.pool.drop_unshared, binding.binding_id, missing)
                        log.warning("binding %s cancelled: %d key(s) never reached %s",
                                    binding.binding_id, len(missing), self.peer_kme_id)
                    else:
                        await self._db(self.pool.mark_acked, binding.binding_id)
                    await self._refresh_room()
                    settled += 1
            except PeerUnavailable as exc:
                log.warning("peer KME unreachable while syncing bindings: %s", exc)
                break
        return settled

    async def run_sweeper(self, stop: asyncio.Event) -> None:
        """Erase kept dec_keys answers when their grace ends and destroy expired bindings
        (see :mod:`.pool`), until ``stop``.

        Sleeps until the oldest one is due; one made later is due no sooner than a whole
        grace (or binding lifetime) from now, so waking then at the latest misses nothing. (A
        binding the follower confirms late is due from its creation: it may wait for the next
        wake-up, at most a grace or a lifetime later.)
        """
        grace = self.pool.redelivery_grace_s
        ttl = self.pool.binding_limits.ttl_s
        while not stop.is_set():
            try:
                erased = await self._db(self.pool.sweep_redeliverable)
                if erased:
                    log.info("erased %d dec_keys answer(s) whose redelivery grace ended", erased)
                    for callback in self.on_redeliverable_erased:
                        callback(erased)
                expired = await self._db(self.pool.expire_bindings)
                if expired:
                    log.warning("destroyed %d bound pool key(s) their SAEs never fetched",
                                expired)
                    await self._refresh_room()
                    for callback in self.on_bindings_expired:
                        callback(expired)
                dues = [d for d in (await self._db(self.pool.next_redelivery_expiry),
                                    await self._db(self.pool.next_binding_expiry))
                        if d is not None]
                due = min(dues) if dues else None
            except Exception:  # keep sweeping; try again in a second
                log.exception("sweeping kept dec_keys answers and expired bindings failed")
                due = time.time() + 1.0
            if due is not None:
                timeout: float | None = max(0.0, due - time.time()) + 0.01
            else:
                timeout = min(grace, ttl) if grace > 0 else ttl
            try:
                await asyncio.wait_for(stop.wait(), timeout)
            except TimeoutError:
                pass

    async def run_sync(self, stop: asyncio.Event, interval_s: float = 1.0) -> None:
        """Background loop of the allocator: resend bindings left unconfirmed by a failure."""
        while not stop.is_set():
            try:
                await self.push_pending()
            except Exception:  # keep syncing; a bad row must not stop the loop
                log.exception("binding sync failed")
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except TimeoutError:
                pass

    async def run_own_keys_sweeper(self, stop: asyncio.Event, interval_s: float = 5.0) -> None:
        """A KME of a pair: destroy own-store keys past their grace or lifetime, until stop."""
        if self.own_keys is None:
            return
        await sweep_until(stop, functools.partial(self._db, self.own_keys.sweep),
                          self.kme_id, interval_s)

    async def pool_stats(self) -> dict[str, Any]:
        stats = await self._db(self.pool.stats)
        if self.own_keys is not None and self.served is not None:
            own = {"own_keys": {**await self._db(self.own_keys.counts),
                                "handed_out": self.counts["own"]},
                   "saes_served": self.served.served()}
        else:
            own = {}
        return {**own,
            "KME_ID": self.kme_id,
            "peer_KME_ID": self.peer_kme_id,
            "role": "allocator" if self.allocator else "follower",
            "stored": stats.stored,
            "free": stats.free,
            "bound_master": stats.bound_master,
            "bound_slave": stats.bound_slave,
            "delivered": stats.delivered,
            "redeliverable": stats.redeliverable,
            "max_key_count": stats.max_key_count,
        }


class UnknownSae(Exception):
    """A slave SAE_ID that is not registered at the KME asked to bind keys for it."""

    def __init__(self, sae_id: str, kme_id: str) -> None:
        super().__init__(f"unknown slave_SAE_ID {sae_id}: not registered at KME {kme_id}")
        self.sae_id = sae_id


async def sweep_until(stop: asyncio.Event, sweep: Callable[[], Awaitable[int]], kme_id: str,
                      interval_s: float) -> None:
    """Destroy a KME's own-store keys past their grace or lifetime every ``interval_s``
    until ``stop``; a failed sweep is logged and the next one runs."""
    while not stop.is_set():
        try:
            erased = await sweep()
            if erased:
                log.info("destroyed %d key(s) of %s's own store", erased, kme_id)
        except Exception:  # keep sweeping; report it
            log.exception("sweeping %s's own key store failed", kme_id)
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except TimeoutError:
            pass


def lookup_error(exc: KeyLookupError) -> etsi.EtsiError:
    """The ETSI answer to dec_keys naming keys this SAE may not have (nothing delivered)."""
    details: list[dict[str, Any]] = []
    if exc.unknown:
        details.append({"unknown_key_IDs": list(exc.unknown)})
    if exc.foreign:
        details.append({"key_IDs_of_other_SAEs": list(exc.foreign)})
    if exc.foreign and not exc.unknown:
        return etsi.Unauthorized("key_ID not addressed to this SAE for this master_SAE_ID",
                                 details)
    return etsi.BadRequest("key_ID unknown or already delivered (nothing was delivered)",
                           details)


def over_quota(exc: QuotaExceeded) -> etsi.Unavailable:
    """The ETSI answer (503: retry once the slave fetched, or its keys expired) for a quota."""
    return etsi.Unavailable(
        f"too many keys bound and not yet fetched: {exc}", [exc.to_json()]
    )


def _not_enough(exc: PoolExhausted, size: int) -> etsi.Unavailable:
    per_key = parts_for_size(size)
    return etsi.Unavailable(
        "not enough keys in the pool; wait for the QKD link to deliver more",
        [{"requested_keys": exc.needed // per_key, "available_keys": exc.available // per_key,
          "size": size}],
    )
