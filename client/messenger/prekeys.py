"""Publishing this profile's prekeys at the relay, so that others can add us.

A refusal by the relay (e.g. ``too_large``) is a MessengerError carrying the relay's code
and reason: without the upload nobody can start a conversation with us, so the user must
see it (the CLI exits non-zero, the TUI shows a line).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Protocol

from client.protocol.bundle import OneTimePrekey, PrekeyBundle, PrekeySecrets, one_time_message
from client.protocol.identity import Identity
from keysource.pq import get_kem
from relay.wire import PrekeyBundle as WirePrekeyBundle

from .api import MessengerError
from .relay_link import RelayError

log = logging.getLogger(__name__)

PREKEYS_LOW = 10  # publish a fresh batch of one-time prekeys below this many at the relay
PREKEYS_BATCH = 50
ONE_TIME_KEM = "ML-KEM-768"


class PrekeyStore(Protocol):
    def load_prekeys(self) -> tuple[PrekeyBundle, PrekeySecrets] | None: ...
    def save_prekeys(self, bundle: PrekeyBundle, secrets: PrekeySecrets) -> None: ...


class PrekeyDirectory(Protocol):
    """The relay's upload (client.messenger.relay_link.RelayLink)."""

    async def upload_prekeys(self, bundle: WirePrekeyBundle) -> int: ...


class Prekeys:
    def __init__(self, store: PrekeyStore, relay: PrekeyDirectory, identity: Identity,
                 handle: str, lock: asyncio.Lock) -> None:
        self._store = store
        self._relay = relay
        self._identity = identity
        self._handle = handle
        self._lock = lock  # shared with accepting a session (it consumes one-time prekeys)

    async def publish(self) -> None:
        """First login: the whole bundle, minus one-time prekeys already used."""
        async with self._lock:
            loaded = self._store.load_prekeys()
        if loaded is None:
            raise MessengerError("this profile has no prekeys: run 'qsecret init' again")
        bundle, secrets = loaded
        one_time = [o for o in bundle.one_time if o.key_id in secrets.one_time]
        await self._upload(replace(bundle, one_time=tuple(one_time)))

    async def replenish(self) -> None:
        """Publish fresh one-time prekeys (never re-publish ones the relay may have handed
        out); they are durable here before anyone can use them."""
        async with self._lock:
            loaded = self._store.load_prekeys()
            if loaded is None:
                return
            bundle, secrets = loaded
            start = max((o.key_id for o in bundle.one_time), default=0) + 1
            fresh = await asyncio.to_thread(self._one_time_prekeys, start, secrets)
            bundle = replace(bundle, one_time=bundle.one_time + fresh)
            self._store.save_prekeys(bundle, secrets)
        await self._upload(replace(bundle, one_time=fresh))

    async def _upload(self, bundle: PrekeyBundle) -> None:
        try:
            stored = await self._relay.upload_prekeys(bundle.to_relay())
        except RelayError as exc:
            code = getattr(exc, "code", None)
            if code is None:  # offline or no answer: the next login publishes again
                log.info("prekey upload not done: %s", exc)
                return
            raise MessengerError(
                f"the relay refused this profile's prekeys, so nobody can add you: {exc}",
                code=code, reason=getattr(exc, "reason", str(exc))) from None
        log.info("published prekeys; the relay holds %d one-time prekeys", stored)

    def _one_time_prekeys(self, start: int, secrets: PrekeySecrets) -> tuple[OneTimePrekey, ...]:
        kem = get_kem(ONE_TIME_KEM)
        out = []
        for key_id in range(start, start + PREKEYS_BATCH):
            pair = kem.generate_keypair()
            secrets.one_time[key_id] = pair.secret_key
            signature = self._identity.sign(one_time_message(
                self._handle, self._identity.signing_public, key_id, pair.public_key))
            out.append(OneTimePrekey(key_id, pair.public_key, signature))
        return tuple(out)
