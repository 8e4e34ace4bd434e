"""The client's sub-commands: init, chat, send, recv, contacts, demo."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from .cli import CliError
from .config import ClientConfig, ConfigError, load_config
from .messenger.api import MessageEvent, MessageView, MessengerError

# The messenger itself (client.messenger.profile and everything it imports, a quarter of a
# second) is imported inside the commands that use it, so 'qsecret --help' and the start of
# 'qsecret send-file' (which hashes the files meanwhile) do not wait for it.

T = TypeVar("T")

PASSPHRASE_ENV = "QSECRET_PASSPHRASE"
RECV_IDLE_S = 2.0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    init = subparsers.add_parser(
        "init",
        help="create a profile: handle, passphrase, identity keys, KME enrolment",
        description=(
            "Create a profile in --data (default: the platform data dir): identity keys "
            "(Ed25519 + ML-DSA-65, X25519), a prekey bundle, and the settings to reach the "
            "relay and this user's KME. The passphrase comes from $QSECRET_PASSPHRASE or a "
            "prompt. Enrol with a KME either with --kme-pki DIR (a KME PKI directory such as "
            "the one 'qsecret kme pair' creates: a client certificate is issued for --sae-id) "
            "or with --kme-ca/--sae-cert/--sae-key you were given."
        ),
    )
    _profile_args(init)
    init.add_argument("--handle", required=True, help="the name others find you by")
    init.add_argument("--sae-id", help="this user's SAE_ID at the KME (default sae-HANDLE)")
    init.add_argument("--kme-pki", type=Path, metavar="DIR",
                      help="KME PKI directory to issue this SAE's certificate from")
    init.add_argument("--kme-ca", help="CA certificate of the KME (PEM)")
    init.add_argument("--sae-cert", help="this SAE's client certificate (PEM)")
    init.add_argument("--sae-key", help="this SAE's client key (PEM)")
    init.add_argument("--qkd-policy", choices=["prefer", "require"],
                      help="without QKD keys: prefer = continue on ML-KEM + X25519 (shown "
                           "degraded); require = refuse to send")
    init.set_defaults(func=run_init)

    chat = subparsers.add_parser(
        "chat", help="open the chat TUI",
        description="Open the Textual chat TUI (passphrase from $QSECRET_PASSPHRASE or asked "
                    "on screen). F1 lists every key binding.",
    )
    _profile_args(chat)
    chat.set_defaults(func=run_chat)

    send = subparsers.add_parser(
        "send", help="send a message (scriptable)",
        description="Send TEXT to HANDLE and exit once the relay holds it durably. "
                    "TEXT '-' sends each line of standard input as a message.",
    )
    _profile_args(send)
    send.add_argument("handle", metavar="HANDLE")
    send.add_argument("text", metavar="TEXT")
    send.add_argument("--json", action="store_true", help="print one JSON object per message")
    send.set_defaults(func=run_send)

    recv = subparsers.add_parser(
        "recv", help="print received messages (scriptable)",
        description="Connect, print the messages waiting at the relay and exit when none "
                    f"arrive for {RECV_IDLE_S:.0f}s; --follow keeps printing until Ctrl+C.",
    )
    _profile_args(recv)
    recv.add_argument("--follow", action="store_true", help="keep running")
    recv.add_argument("--json", action="store_true", help="one JSON object per line")
    _timeout_arg(recv)
    recv.set_defaults(func=run_recv)

    export = subparsers.add_parser(
        "export", help="print a conversation as text or JSON",
        description="Print the conversation with HANDLE from the local store (no network).",
    )
    _profile_args(export)
    export.add_argument("handle", metavar="HANDLE")
    export.add_argument("--json", action="store_true", help="JSON instead of text")
    export.set_defaults(func=run_export)

    contacts = subparsers.add_parser(
        "contacts", help="add, list or verify contacts",
        description="Manage contacts: 'add HANDLE' fetches their prekey bundle from the relay "
                    "and opens a session; 'list'; 'verify HANDLE' shows the safety number and "
                    "QR code (--yes marks the contact verified once you compared them).",
    )
    contacts_sub = contacts.add_subparsers(dest="contacts_command", metavar="ACTION")
    add = contacts_sub.add_parser("add", help="add a contact by handle")
    _profile_args(add)
    add.add_argument("handle", metavar="HANDLE")
    add.set_defaults(func=run_contacts_add)
    listing = contacts_sub.add_parser("list", help="list contacts")
    _profile_args(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=run_contacts_list)
    verify = contacts_sub.add_parser("verify", help="show (and confirm) a safety number")
    _profile_args(verify)
    verify.add_argument("handle", metavar="HANDLE")
    verify.add_argument("--yes", action="store_true", help="mark the contact verified")
    verify.set_defaults(func=run_contacts_verify)
    contacts.set_defaults(func=lambda args: contacts.print_help() or 2)

    from . import files_cli  # send-file, receive-files, transfers (they reuse helpers here)

    files_cli.register(subparsers)


def _profile_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="profile directory ($QSECRET_DATA_DIR)")
    parser.add_argument("--relay", dest="relay_url", help="relay URL ($QSECRET_RELAY_URL)")
    parser.add_argument("--kme", dest="kme_url", help="KME URL ($QSECRET_KME_URL)")


def _timeout_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="give up connecting after this many seconds (default 30)")


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


def in_background(call: Callable[..., T], *args: Any, name: str = "background") -> Future[T]:
    """Run ``call`` in a daemon thread (an error exit never waits for it)."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(call(*args))
        except BaseException as exc:  # handed to whoever awaits the future
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True, name=name).start()
    return future


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
