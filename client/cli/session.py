"""What the client's commands share: the config, the passphrase, an unlocked messenger.

The messenger itself (``client.messenger.profile`` and everything it imports, a quarter of a
second) is imported inside the functions that use it, so 'qsecret --help' and the start of
'qsecret send-file' (which hashes the files meanwhile) do not wait for it.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from dataclasses import replace
from typing import Any

from client.config import ClientConfig, ConfigError, load_config
from client.work import in_background

from .entry import startup_done
from .errors import CliError

PASSPHRASE_ENV = "QSECRET_PASSPHRASE"


def config_for(args: argparse.Namespace) -> ClientConfig:
    """The profile's settings, with this run's --data, --relay and --kme."""
    try:
        return load_config(args.data, relay_url=args.relay_url, kme_url=args.kme_url)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def passphrase(confirm: bool = False) -> str:
    """$QSECRET_PASSPHRASE, or asked on the terminal (never read from a pipe)."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    if not sys.stdin.isatty():
        raise CliError(f"no passphrase: set ${PASSPHRASE_ENV} or run in a terminal")
    value = getpass.getpass("Passphrase: ")
    if confirm and getpass.getpass("Passphrase again: ") != value:
        raise CliError("the two passphrases differ")
    return value


def open_messenger(args: argparse.Namespace, **settings: str) -> Any:
    """Unlock the profile and build its messenger, not yet started (``settings`` override
    config.toml for this run). A wrong passphrase or a missing profile raises
    ``MessengerError``.

    The passphrase KDF runs on a worker thread while this one imports the messenger.
    """
    from client.messenger.unlock import unlock_store

    config = config_for(args)
    if settings:
        config = replace(config, **settings)
    unlocking = in_background(unlock_store, config, passphrase(), name="unlock")
    from client.messenger.profile import messenger_for

    messenger = messenger_for(config, unlocking.result())
    startup_done()  # the collector resumes, if the entry point paused it for the start
    return messenger


async def go_online(messenger: Any, timeout: float) -> None:
    """Start ``messenger`` and wait for its relay login. On failure it is stopped (its tasks
    ended, its store closed) before the error (a ``MessengerError``: one line, exit status 2,
    from ``entry.main``) leaves."""
    await messenger.start()
    try:
        await messenger.wait_online(timeout)
    except BaseException:
        await messenger.stop()
        raise
