"""``qsecret chat``: the Textual chat TUI (imported only when this command runs)."""

from __future__ import annotations

import argparse
import os

from .session import PASSPHRASE_ENV, config_for


def run_chat(args: argparse.Namespace) -> int:
    """Open the TUI; with $QSECRET_PASSPHRASE set and a profile present, already unlocked."""
    from client.messenger.profile import ProfileGate, open_profile
    from client.tui.app import QsecretApp
    from keysource.kme.network_status import NetworkSource

    config = config_for(args)
    gate = ProfileGate(config)
    messenger = None
    if os.environ.get(PASSPHRASE_ENV) and gate.profile_exists():
        messenger = open_profile(config, os.environ[PASSPHRASE_ENV])
    app = QsecretApp(gate, export_dir=config.data_dir / "exports", messenger=messenger,
                     network=NetworkSource.for_profile(config.kme_ca, config.sae_cert,
                                                       config.sae_key))
    app.run()
    return 0
