"""``qsecret backup FILE`` and ``qsecret restore FILE``: a sealed copy of the profile's store,
and putting it back (see client.store.backup and the README's "Backups")."""

from __future__ import annotations

import argparse

from client.messenger.unlock import store_path
from client.store.backup import backup_store, restore_store

from .session import config_for, passphrase


def run_backup(args: argparse.Namespace) -> int:
    """Copy the store (already sealed) to FILE once it opens with the passphrase."""
    store = store_path(config_for(args))
    size = backup_store(passphrase(), store, args.file, force=args.force)
    print(f"backed up {store} to {args.file} ({size} bytes, sealed under the profile's "
          "passphrase); put it back with 'qsecret restore FILE'")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    """Replace (with --force) or create the profile's store from a backup that opens."""
    store = store_path(config_for(args))
    kept = restore_store(passphrase(), args.file, store, force=args.force)
    print(f"restored {store} from {args.file}")
    if kept is not None:
        print(f"the store it replaced is kept as {kept}")
    return 0
