"""What the client's sub-commands do: init, chat, send, recv, export, contacts (their
parsers are in ``client.parsers``)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .cli import CliError
from .config import ClientConfig, ConfigError, load_config
from .messenger.api import MessageEvent, MessageView, MessengerError
from .parsers import RECV_IDLE_S
from .work import in_background

# The messenger itself (client.messenger.profile and everything it imports, a quarter of a
# second) is imported inside the commands that use it, so 'qsecret --help' and the start of
# 'qsecret send-file' (which hashes the files meanwhile) do not wait for it.

PASSPHRASE_ENV = "QSECRET_PASSPHRASE"


def _config(args: argparse.Namespace) -> ClientConfig:
    try:
        return load_config(args.data, relay_url=args.relay_url, kme_url=args.kme_url)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def _passphrase(confirm: bool = False) -> str:
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    if not sys.stdin.isatty():
        raise CliError(f"no passphrase: set ${PASSPHRASE_ENV} or run in a terminal")
    value = getpass.getpass("Passphrase: ")
    if confirm and getpass.getpass("Passphrase again: ") != value:
        raise CliError("the two passphrases differ")
    return value


# -- init --------------------------------------------------------------------------------


def run_init(args: argparse.Namespace) -> int:
    config = _config(args)
    sae_id = args.sae_id or config.sae_id or f"sae-{args.handle}"
    config = replace(config, sae_id=sae_id)
    if args.qkd_policy:
        config = replace(config, qkd_policy=args.qkd_policy)
    if args.kme_pki:
        from keysource.kme.pki import Pki, PkiError

        pki = Pki(args.kme_pki)
        if not pki.exists():
            raise CliError(f"{args.kme_pki} is not a KME PKI directory (no ca.pem)")
        try:
            pki.ensure(sae_ids=[sae_id])
        except PkiError as exc:
            raise CliError(str(exc)) from None
        paths = pki.sae(sae_id)
        config = replace(config, kme_ca=str(pki.ca_cert), sae_cert=str(paths.cert),
                         sae_key=str(paths.key))
    for name in ("kme_ca", "sae_cert", "sae_key"):
        value = getattr(args, name)
        if value:
            config = replace(config, **{name: str(Path(value).resolve())})
    if config.kme_url.startswith("https://") and not (
        config.kme_ca and config.sae_cert and config.sae_key
    ):
        raise CliError("an https KME needs --kme-pki DIR or --kme-ca, --sae-cert and --sae-key")
    passphrase = _passphrase(confirm=True)
    from .messenger.profile import create_profile

    try:
        create_profile(config, args.handle, passphrase)
    except MessengerError as exc:
        raise CliError(str(exc)) from None
    print(f"created profile @{args.handle} in {config.data_dir}")
    print(f"  relay {config.relay_url}   KME {config.kme_url} as SAE {config.sae_id}")
    return 0


# -- chat --------------------------------------------------------------------------------


def run_chat(args: argparse.Namespace) -> int:
    from .messenger.profile import ProfileGate, open_profile
    from .tui.app import QsecretApp

    config = _config(args)
    gate = ProfileGate(config)
    messenger = None
    if os.environ.get(PASSPHRASE_ENV) and gate.profile_exists():
        try:
            messenger = open_profile(config, os.environ[PASSPHRASE_ENV])
        except MessengerError as exc:
            raise CliError(str(exc)) from None
    app = QsecretApp(gate, export_dir=config.data_dir / "exports", messenger=messenger)
    app.run()
    return 0


# -- scriptable send / recv --------------------------------------------------------------


def _open(args: argparse.Namespace, **settings: str) -> Any:
    """Unlock the profile (``settings`` override config.toml for this run).

    The passphrase KDF runs on a worker thread while this one imports the messenger.
    """
    from .messenger.unlock import unlock_store

    config = _config(args)
    if settings:
        config = replace(config, **settings)
    unlocking = in_background(unlock_store, config, _passphrase(), name="unlock")
    from .messenger.profile import messenger_for

    try:
        return messenger_for(config, unlocking.result())
    except MessengerError as exc:
        raise CliError(str(exc)) from None


async def _online(messenger: Any, timeout: float) -> None:
    await messenger.start()
    try:
        await messenger.wait_online(timeout)
    except MessengerError as exc:
        await messenger.stop()
        raise CliError(str(exc)) from None


def run_send(args: argparse.Namespace) -> int:
    messenger = _open(args)
    lines = sys.stdin.read().splitlines() if args.text == "-" else [args.text]

    async def main() -> int:
        await _online(messenger, 15)
        failures = 0
        try:
            for line in lines:
                if not line:
                    continue
                try:
                    payload_id = await messenger.send_and_wait(args.handle, line)
                except MessengerError as exc:
                    failures += 1
                    print(f"qsecret send: {exc}", file=sys.stderr)
                    if args.json:
                        print(json.dumps({"to": args.handle, "status": "failed",
                                          "error": str(exc)}), flush=True)
                    continue
                if args.json:
                    print(json.dumps({"id": payload_id, "to": args.handle, "status": "sent"}),
                          flush=True)
        finally:
            await messenger.stop()
        return 1 if failures else 0

    return asyncio.run(main())


def run_recv(args: argparse.Namespace) -> int:
    """Print every message not shown before (unread history first), exactly once."""
    messenger = _open(args)

    async def main() -> int:
        last = time.monotonic()
        shown: set[str] = set()
        peers: set[str] = set()

        def show(m: MessageView) -> None:
            nonlocal last
            last = time.monotonic()
            if m.outgoing or m.message_id in shown:
                return
            shown.add(m.message_id)
            peers.add(m.peer)
            if args.json:
                print(json.dumps({"id": m.message_id, "from": m.peer, "text": m.text,
                                  "time": m.timestamp, "keys": m.sources, "mode": m.mode}),
                      flush=True)
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(m.timestamp))
                print(f"[{stamp}] {m.peer}: {m.text}    ({m.sources})", flush=True)

        messenger.subscribe(lambda e: show(e.message) if isinstance(e, MessageEvent) else None)
        await _online(messenger, args.timeout)
        try:
            for contact in messenger.contacts():
                for message in messenger.unread(contact.handle):
                    show(message)
            while args.follow or time.monotonic() - last < RECV_IDLE_S:
                await asyncio.sleep(0.2)
                for peer in list(peers):  # read receipts: these were shown to the user
                    await messenger.mark_read(peer)
                peers.clear()
        finally:
            await messenger.stop()
        return 0

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0


def run_export(args: argparse.Namespace) -> int:
    messenger = _open(args)
    try:
        if args.handle not in {c.handle for c in messenger.contacts()}:
            raise CliError(f"no conversation with {args.handle!r}")
        sys.stdout.write(messenger.export(args.handle, "json" if args.json else "text"))
        if args.json:
            print()
    finally:
        messenger.store.close()
    return 0


# -- contacts ----------------------------------------------------------------------------


def run_contacts_add(args: argparse.Namespace) -> int:
    messenger = _open(args)

    async def main() -> int:
        await _online(messenger, 15)
        try:
            contact = await messenger.add_contact(args.handle)
        except MessengerError as exc:
            raise CliError(str(exc)) from None
        finally:
            await messenger.stop()
        print(f"added {contact.handle}; compare safety numbers with "
              f"'qsecret contacts verify {contact.handle}'")
        return 0

    return asyncio.run(main())


def run_contacts_list(args: argparse.Namespace) -> int:
    messenger = _open(args)
    try:
        contacts = messenger.contacts()
    finally:
        messenger.store.close()
    if args.json:
        print(json.dumps([{"handle": c.handle, "verified": c.verified, "unread": c.unread}
                          for c in contacts]))
    else:
        for c in contacts:
            mark = "verified" if c.verified else "NOT verified"
            print(f"{c.handle:20} {mark:13} {c.unread} unread")
        if not contacts:
            print("no contacts yet: qsecret contacts add HANDLE")
    return 0


def run_contacts_verify(args: argparse.Namespace) -> int:
    messenger = _open(args)

    async def main() -> int:
        try:
            number = messenger.safety_number(args.handle)
            print(f"Safety number with {args.handle}:\n\n  {number.digits}\n")
            print(number.qr_text)
            if args.yes:
                await messenger.set_verified(args.handle, True)
                print(f"\n{args.handle} marked verified.")
            else:
                print("\nCompare with your contact; if they match run again with --yes.")
        except MessengerError as exc:
            raise CliError(str(exc)) from None
        finally:
            messenger.store.close()
        return 0

    return asyncio.run(main())
