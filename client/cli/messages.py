"""``qsecret send``, ``recv`` and ``export``: messages from a shell, for people and scripts."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from client.messenger.api import (
    GroupEvent,
    GroupReceiptEvent,
    MessageEvent,
    MessageView,
    MessengerError,
    TransferEvent,
    TransferState,
    TransferView,
)

from .errors import EXIT_NOT_DONE, EXIT_OK, CliError, one_line
from .parsers import RECV_HELD_WAIT_S, RECV_IDLE_S
from .session import go_online, open_messenger


def run_send(args: argparse.Namespace) -> int:
    """Send each line; a refused one is reported and the others still go (exit status 1)."""
    messenger = open_messenger(args)
    lines = sys.stdin.read().splitlines() if args.text == "-" else [args.text]

    async def main() -> int:
        await go_online(messenger, 15)
        if args.handle.startswith("@"):  # the group's latest roster and keys first
            try:
                await messenger.caught_up(15)
            except BaseException:
                await messenger.stop()
                raise
        failures = 0
        try:
            for line in lines:
                if not line:
                    continue
                try:
                    if args.handle.startswith("@"):
                        payload_id = (await messenger.send_group(args.handle[1:], line)).message_id
                    else:
                        payload_id = await messenger.send_and_wait(args.handle, line)
                except MessengerError as exc:
                    failures += 1
                    print(f"qsecret send: {one_line(exc)}", file=sys.stderr)
                    if args.json:
                        print(json.dumps({"to": args.handle, "status": "failed",
                                          "error": one_line(exc)}), flush=True)
                    continue
                if args.json:
                    print(json.dumps({"id": payload_id, "to": args.handle, "status": "sent"}),
                          flush=True)
        finally:
            await messenger.stop()
        return EXIT_NOT_DONE if failures else EXIT_OK

    return asyncio.run(main())


def run_recv(args: argparse.Namespace) -> int:
    """Print every message not shown before (unread history first), exactly once."""
    messenger = open_messenger(args)

    async def main() -> int:
        last = time.monotonic()
        shown: set[str] = set()
        peers: set[str] = set()
        groups_shown: set[str] = set()

        def show(m: MessageView) -> None:
            nonlocal last
            last = time.monotonic()
            if m.outgoing or m.message_id in shown:
                return
            shown.add(m.message_id)
            if m.group_id:
                groups_shown.add(m.group_id)
            else:
                peers.add(m.peer)
            if args.json:
                line = {"id": m.message_id, "from": m.peer, "text": m.text,
                        "time": m.timestamp, "keys": m.sources, "mode": m.mode}
                if m.group_id:
                    line |= {"group": m.group, "group_id": m.group_id}
                print(json.dumps(line), flush=True)
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(m.timestamp))
                where = f"@{m.group} " if m.group_id else ""
                print(f"[{stamp}] {where}{m.peer}: {m.text}    ({m.sources})", flush=True)

        events_shown = 0  # group events and receipts

        def show_group(event: GroupEvent) -> None:
            nonlocal last, events_shown
            last = time.monotonic()
            events_shown += 1
            if args.json:
                print(json.dumps({"event": "group", "group": event.group.name,
                                  "group_id": event.group.group_id, "note": event.note,
                                  "status": event.group.status, "refused": event.refused,
                                  "members": list(event.group.members)}), flush=True)
            else:
                print(f"@{event.group.name}: {event.note}", flush=True)

        files_shown: set[tuple[str, str]] = set()

        def show_group_file(view: TransferView) -> None:
            """A group file offered to you (or refused, with why): its group and sender;
            'qsecret receive-files' receives it."""
            nonlocal last
            if view.outgoing or not view.group or view.state not in (
                    TransferState.OFFERED, TransferState.FAILED):
                return
            if (view.transfer_id, view.state.value) in files_shown:
                return
            files_shown.add((view.transfer_id, view.state.value))
            last = time.monotonic()
            if args.json:
                print(json.dumps({"event": "file", "group": view.group,
                                  "group_id": view.group_id, "from": view.peer,
                                  "transfer": view.transfer_id, "names": list(view.names),
                                  "bytes": view.total_bytes, "state": view.state.value,
                                  "detail": view.detail}), flush=True)
            else:
                what = (f"offers {view.title} ({view.total_bytes} bytes): 'qsecret "
                        "receive-files' takes it" if view.state is TransferState.OFFERED
                        else view.detail)
                print(f"@{view.group} {view.peer}: file {what}", flush=True)

        def show_receipts(event: GroupReceiptEvent) -> None:
            """Members' receipts for one of our group messages: the counts now."""
            nonlocal last, events_shown
            last = time.monotonic()
            events_shown += 1
            counts = event.counts
            if args.json:
                print(json.dumps({"event": "receipts", "group": event.group,
                                  "group_id": event.group_id,
                                  "id": event.message_id, "delivered": counts.delivered,
                                  "read": counts.read, "recipients": counts.recipients}),
                      flush=True)
            else:
                print(f"@{event.group}: your message {event.message_id[:8]}: "
                      f"{counts.describe()}", flush=True)

        def on_event(event: object) -> None:
            if isinstance(event, MessageEvent):
                show(event.message)
            elif isinstance(event, GroupEvent):
                show_group(event)
            elif isinstance(event, TransferEvent):
                show_group_file(event.transfer)
            elif isinstance(event, GroupReceiptEvent):
                show_receipts(event)

        messenger.subscribe(on_event)
        for message in messenger.groups.unread():  # came while another command ran: first
            show(message)
        await go_online(messenger, args.timeout)
        status = EXIT_OK
        try:
            for contact in messenger.contacts():
                for message in messenger.unread(contact.handle):
                    show(message)
            try:  # the relay's backlog first, however long opening it takes (KME waits)
                await messenger.caught_up(args.timeout)
            except MessengerError as exc:
                if not args.follow:
                    print(f"qsecret recv: {one_line(exc)}", file=sys.stderr)
                    status = EXIT_NOT_DONE
            last = time.monotonic()
            held_until = last + RECV_HELD_WAIT_S  # messages waiting for their keys

            def more_may_come() -> bool:
                now = time.monotonic()
                return now - last < RECV_IDLE_S or (
                    now < held_until and messenger.held_for_keys() > 0)

            while args.follow or (status == EXIT_OK and more_may_come()):
                await asyncio.sleep(0.2)
                for peer in list(peers):  # read receipts: these were shown to the user
                    await messenger.mark_read(peer)
                peers.clear()
                if groups_shown:  # what was shown is not shown again by the next recv
                    messenger.groups.mark_shown()  # (and read receipts are owed for it)
                    groups_shown.clear()
                    await messenger.groups.settle()  # the receipts sealed into the outbox
            if status == EXIT_OK and (held := messenger.held_for_keys()):
                print(f"qsecret recv: {held} message(s) still wait for their keys; they stay "
                      "at the relay and a later recv shows them", file=sys.stderr)
            elif status == EXIT_OK and not (shown or files_shown or events_shown or args.json):
                # Say the login worked: a first recv is how a new user publishes prekeys.
                print(f"qsecret recv: no new messages (logged in as @{messenger.handle}; "
                      "your prekeys are on the relay)", file=sys.stderr)
        finally:
            await messenger.stop()
        return status

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0


def run_export(args: argparse.Namespace) -> int:
    """The conversation from the local store, as text or JSON (no network)."""
    messenger = open_messenger(args)
    try:
        if args.handle not in {c.handle for c in messenger.contacts()}:
            raise CliError(f"no conversation with {args.handle!r}")
        sys.stdout.write(messenger.export(args.handle, "json" if args.json else "text"))
        if args.json:
            print()
    finally:
        messenger.store.close()
    return 0
