"""Publishing this profile's prekeys at the relay, so that others can add us.

A refusal by the relay (e.g. ``too_large``) is a MessengerError carrying the relay's code
and reason: without the upload nobody can start a conversation with us, so the user must
see it (the CLI exits non-zero, the TUI shows a line).

What others' fetches may cost us is bounded:

* A refill asked for by the relay (``prekeys_low``) runs as one background task, at most
  one per ``REFILL_INTERVAL_S`` (a request meanwhile is kept and served when the interval
  is over), never inside the relay's read loop: that loop must stay free to deliver the
  upload's answer and everyone's messages.
* At most ``MAX_UNUSED`` unused one-time private keys are kept; the oldest beyond that are
  pruned. An upload replaces the one-time prekeys the relay holds (relay ``put_bundle``), so
  pruning runs only once an upload is acknowledged and never touches a key of that upload:
  the relay holds no public half of a pruned key, and a bundle fetched from it always opens.
  A key pruned had been handed out and not used yet (its fetcher's handshake fails) or
  was replaced unused; with a refill of ``PREKEYS_BATCH`` per crossing that takes more
  than one full batch of fetches after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, Protocol

from client.protocol.bundle import OneTimePrekey, PrekeyBundle, PrekeySecrets, one_time_message
from client.protocol.identity import Identity
from keysource.pq import get_kem
from relay.wire import MAX_ONE_TIME_PER_UPLOAD
from relay.wire import PrekeyBundle as WirePrekeyBundle

from .api import MessengerError
from .relay_link import RelayError

log = logging.getLogger(__name__)

PREKEYS_LOW = 10  # publish a fresh batch of one-time prekeys below this many at the relay
PREKEYS_BATCH = MAX_ONE_TIME_PER_UPLOAD  # one-time prekeys per upload (the relay holds them)
MAX_UNUSED = 2 * PREKEYS_BATCH  # unused one-time private keys kept (the sealed blob's bound)
REFILL_INTERVAL_S = 10.0  # at most one refill the relay asked for per this many seconds
ONE_TIME_KEM = "ML-KEM-768"

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[Any] | None"]


class PrekeyStore(Protocol):
    def load_prekeys(self) -> tuple[PrekeyBundle, PrekeySecrets] | None: ...
    def save_prekeys(self, bundle: PrekeyBundle, secrets: PrekeySecrets) -> None: ...


class PrekeyDirectory(Protocol):
    """The relay's upload (client.messenger.relay_link.RelayLink)."""

    async def upload_prekeys(self, bundle: WirePrekeyBundle) -> int: ...


class Prekeys:
    def __init__(self, store: PrekeyStore, relay: PrekeyDirectory, identity: Identity,
                 handle: str, lock: asyncio.Lock, *, spawn: Spawn,
                 on_error: Callable[[MessengerError], None] | None = None,
                 refill_interval: float = REFILL_INTERVAL_S) -> None:
        self._store = store
        self._relay = relay
        self._identity = identity
        self._handle = handle
        self._lock = lock  # shared with accepting a session (it consumes one-time prekeys)
        self._uploading = asyncio.Lock()  # one upload (and its pruning) at a time, in order
        self._spawn = spawn
        self._on_error = on_error
        self._refill_interval = refill_interval
        self._refill_task: asyncio.Task[Any] | None = None
        self._refill_wanted = False
        self._last_refill = float("-inf")  # loop time the last refill started
        # Made and saved here but not yet acknowledged by the relay: sent again rather than
        # made anew, so failed uploads cannot grow the store.
        self._unconfirmed: set[int] = set()

    async def publish(self) -> None:
        """First login: the whole bundle with the newest unused one-time prekeys."""
        async with self._uploading:
            async with self._lock:
                loaded = self._store.load_prekeys()
            if loaded is None:
                raise MessengerError("this profile has no prekeys: run 'qsecret init' again")
            bundle, secrets = loaded
            unused = [o for o in bundle.one_time if o.key_id in secrets.one_time]
            await self._upload_then_prune(bundle, unused[-PREKEYS_BATCH:])

    async def replenish(self) -> None:
        """Publish fresh one-time prekeys (never re-publish ones the relay may have handed
        out); they are durable here before anyone can use them."""
        async with self._uploading:
            self._last_refill = asyncio.get_running_loop().time()
            async with self._lock:
                loaded = self._store.load_prekeys()
            if loaded is None:
                return
            bundle, secrets = loaded
            batch = [o for o in bundle.one_time
                     if o.key_id in self._unconfirmed and o.key_id in secrets.one_time]
            if not batch:
                start = _next_one_time_id(bundle, secrets)
                # Made outside the lock: accepting a session need not wait for 50 keys.
                fresh, private = await asyncio.to_thread(self._one_time_prekeys, start)
                async with self._lock:
                    loaded = self._store.load_prekeys()
                    if loaded is None:
                        return
                    bundle, secrets = loaded
                    secrets.one_time.update(private)
                    secrets.next_one_time = start + len(fresh)
                    bundle = replace(bundle, one_time=bundle.one_time + fresh)
                    self._store.save_prekeys(bundle, secrets)
                self._unconfirmed = {o.key_id for o in fresh}
                batch = list(fresh)
            await self._upload_then_prune(bundle, batch)

    def request_refill(self) -> None:
        """The relay says it runs low: refill in the background, never in the caller.

        One refill task at a time; requests while it waits or runs are folded into it, and
        refills start at most once per ``refill_interval`` seconds."""
        self._refill_wanted = True
        if self._refill_task is not None:
            return
        self._refill_task = self._spawn(self._refill_in_background(), "prekey-refill")

    async def _refill_in_background(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._refill_wanted:
                due = self._last_refill + self._refill_interval - loop.time()
                if due > 0:
                    await asyncio.sleep(due)  # the rate limit itself, not a synchronisation
                self._refill_wanted = False
                try:
                    await self.replenish()
                except MessengerError as exc:  # a refusal: the user must see it
                    log.error("%s", exc)
                    if self._on_error is not None:
                        self._on_error(exc)
        finally:
            self._refill_task = None

    async def _upload_then_prune(self, bundle: PrekeyBundle,
                                 one_time: list[OneTimePrekey]) -> None:
        """Upload ``one_time`` (it replaces what the relay holds); once acknowledged, keep
        those and the newest unused keys up to MAX_UNUSED, and drop the rest here."""
        stored = await self._upload(replace(bundle, one_time=tuple(one_time)))
        if stored is None:
            return
        published = {o.key_id for o in one_time}
        self._unconfirmed -= published
        async with self._lock:
            loaded = self._store.load_prekeys()
            if loaded is None:
                return
            bundle, secrets = loaded
            newest = sorted(secrets.one_time)[-MAX_UNUSED:]
            keep = (set(newest) | published) & secrets.one_time.keys()
            listed = {o.key_id for o in bundle.one_time}
            if keep == secrets.one_time.keys() and listed <= keep:
                return
            secrets.one_time = {k: v for k, v in secrets.one_time.items() if k in keep}
            secrets.next_one_time = _next_one_time_id(bundle, secrets)
            self._store.save_prekeys(
                replace(bundle, one_time=tuple(o for o in bundle.one_time if o.key_id in keep)),
                secrets)
        log.info("kept %d unused one-time prekeys, pruned the rest", len(keep))

    async def _upload(self, bundle: PrekeyBundle) -> int | None:
        """The relay's count after the upload; None when it was not answered (offline)."""
        try:
            stored = await self._relay.upload_prekeys(bundle.to_relay())
        except RelayError as exc:
            code = getattr(exc, "code", None)
            if code is None:  # offline or no answer: the next login publishes again
                log.info("prekey upload not done: %s", exc)
                return None
            raise MessengerError(
                f"the relay refused this profile's prekeys, so nobody can add you: {exc}",
                code=code, reason=getattr(exc, "reason", str(exc))) from None
        log.info("published prekeys; the relay holds %d one-time prekeys", stored)
        return stored

    def _one_time_prekeys(self, start: int
                          ) -> tuple[tuple[OneTimePrekey, ...], dict[int, bytes]]:
        kem = get_kem(ONE_TIME_KEM)
        public, private = [], {}
        for key_id in range(start, start + PREKEYS_BATCH):
            pair = kem.generate_keypair()
            private[key_id] = pair.secret_key
            signature = self._identity.sign(one_time_message(
                self._handle, self._identity.signing_public, key_id, pair.public_key))
            public.append(OneTimePrekey(key_id, pair.public_key, signature))
        return tuple(public), private


def _next_one_time_id(bundle: PrekeyBundle, secrets: PrekeySecrets) -> int:
    """The lowest id never issued: ids are never reused, even after pruning."""
    held = [o.key_id for o in bundle.one_time] + list(secrets.one_time)
    return max([secrets.next_one_time, *(key_id + 1 for key_id in held), 1])
