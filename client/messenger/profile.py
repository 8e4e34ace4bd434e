"""Creating and unlocking a profile: identity, prekeys, KME enrolment and settings."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

from client.config import ClientConfig
from client.protocol import Identity, generate_prekeys
from client.protocol.bundle import conservative_kem_available
from client.store.store import Store

from .api import MessengerError
from .service import MessengerService
from .unlock import STORE_FILE, store_path, unlock_store

__all__ = ["STORE_FILE", "ProfileGate", "create_profile", "messenger_for", "open_profile",
           "store_path"]
ONE_TIME_PREKEYS = 50
HANDLE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")


def check_handle(handle: str) -> str:
    if not HANDLE_PATTERN.match(handle):
        raise MessengerError(
            f"invalid handle {handle!r}: use 1-32 lower-case letters, digits, '.', '_' or '-'"
        )
    return handle


def create_profile(config: ClientConfig, handle: str, passphrase: str) -> None:
    """Make identity keys and a prekey bundle, sealed under ``passphrase`` (blocking)."""
    check_handle(handle)
    path = store_path(config)
    if path.exists():
        raise MessengerError(f"a profile already exists in {config.data_dir}")
    if not config.sae_id:
        raise MessengerError(
            "no SAE_ID: enrol with a KME first (qsecret init --sae-id ... or --kme-pki ...)"
        )
    identity = Identity.generate()
    bundle, secrets = generate_prekeys(
        identity, handle, sae_id=config.sae_id, kme_hint=config.kme_url,
        one_time_count=ONE_TIME_PREKEYS, conservative=conservative_kem_available(),
    )
    config.save()
    try:
        with Store.open(passphrase, path) as store:
            store.save_identity(handle, identity)
            store.save_prekeys(bundle, secrets)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def open_profile(config: ClientConfig, passphrase: str) -> MessengerService:
    """Unlock the store and build the (not yet started) messenger (blocking)."""
    return messenger_for(config, unlock_store(config, passphrase))


def messenger_for(config: ClientConfig, store: Store) -> MessengerService:
    """The (not yet started) messenger of an unlocked store (closed if it has no identity)."""
    loaded = store.load_identity()
    if loaded is None:
        store.close()
        raise MessengerError(f"the profile in {config.data_dir} has no identity")
    handle, identity = loaded
    return MessengerService(config, store, handle, identity,
                            save_config=lambda updated: updated.save())


class ProfileGate:
    """The TUI's way in: first-run creation or unlock, off the event loop (Argon2id is slow)."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config

    def profile_exists(self) -> bool:
        return store_path(self.config).exists()

    async def create(self, handle: str, passphrase: str) -> MessengerService:
        config = self.config
        if not config.sae_id:
            config = replace(config, sae_id=f"sae-{handle}")
        await asyncio.to_thread(create_profile, config, handle, passphrase)
        self.config = config
        return await self.unlock(passphrase)

    async def unlock(self, passphrase: str) -> MessengerService:
        return await asyncio.to_thread(open_profile, self.config, passphrase)
