"""``qsecret contacts add|list|verify``: find people by handle, compare safety numbers."""

from __future__ import annotations

import argparse
import asyncio
import json

from .session import go_online, open_messenger


def run_contacts_add(args: argparse.Namespace) -> int:
    """Fetch the peer's prekey bundle and open a session; a peer who never logged in (no
    prekeys) or a refusal by the relay is a ``MessengerError``: one line, exit status 2."""
    messenger = open_messenger(args)

    async def main() -> int:
        await go_online(messenger, 15)
        try:
            contact = await messenger.add_contact(args.handle)
        finally:
            await messenger.stop()
        print(f"added {contact.handle}; compare safety numbers with "
              f"'qsecret contacts verify {contact.handle}'")
        return 0

    return asyncio.run(main())


def run_contacts_list(args: argparse.Namespace) -> int:
    """Every contact, verified or not, with unread counts (local store only)."""
    messenger = open_messenger(args)
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
    """Print the safety number and its QR code; --yes records that they were compared."""
    messenger = open_messenger(args)

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
        finally:
            messenger.store.close()
        return 0

    return asyncio.run(main())
