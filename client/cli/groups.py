"""``qsecret group create|add|remove|leave|rename|promote|demote|list|history``: groups.

Every change is signed with this profile's identity and sent to each member through the
pairwise sessions; a command first takes in what the relay holds for us (so a change builds on
the latest roster). When the relay cannot be reached, the change is still made and signed
here, and its messages wait in the outbox for the next login.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from client.messenger.api import GroupView, MessageView, MessengerError

from .errors import EXIT_OK, one_line
from .session import open_messenger


async def _online_or_queued(messenger: Any, timeout: float) -> bool:
    """Log in and take in the backlog; False (and a note) when the relay is unreachable."""
    await messenger.start()
    try:
        await messenger.wait_online(timeout)
    except MessengerError as exc:
        print(f"qsecret group: offline ({one_line(exc)}); the change is made here and its "
              "messages go at the next login", file=sys.stderr)
        return False
    await messenger.caught_up(timeout)
    return True


def _run(args: argparse.Namespace, action: str) -> int:
    messenger = open_messenger(args)

    async def main() -> int:
        try:
            await _online_or_queued(messenger, args.timeout)
            view = await _act(messenger, args, action)
            await messenger.groups.settle()
        finally:
            await messenger.stop()
        _print_view(view, args.json)
        return EXIT_OK

    return asyncio.run(main())


async def _act(messenger: Any, args: argparse.Namespace, action: str) -> GroupView:
    if action == "create":
        return await messenger.create_group(args.name, args.members)
    if action == "add":
        return await messenger.add_to_group(args.group, args.members)
    if action == "remove":
        return await messenger.remove_from_group(args.group, args.members)
    if action == "leave":
        return await messenger.leave_group(args.group)
    if action == "rename":
        return await messenger.rename_group(args.group, args.name)
    return await messenger.set_group_admin(args.group, args.members, action == "promote")


def run_group_create(args: argparse.Namespace) -> int:
    return _run(args, "create")


def run_group_add(args: argparse.Namespace) -> int:
    return _run(args, "add")


def run_group_remove(args: argparse.Namespace) -> int:
    return _run(args, "remove")


def run_group_leave(args: argparse.Namespace) -> int:
    return _run(args, "leave")


def run_group_rename(args: argparse.Namespace) -> int:
    return _run(args, "rename")


def run_group_promote(args: argparse.Namespace) -> int:
    return _run(args, "promote")


def run_group_demote(args: argparse.Namespace) -> int:
    return _run(args, "demote")


def run_group_list(args: argparse.Namespace) -> int:
    """Every group in the local store (no network)."""
    messenger = open_messenger(args)
    try:
        views = messenger.group_list()
    finally:
        messenger.store.close()
    if args.json:
        print(json.dumps([view_json(v, changes=args.changes) for v in views]))
        return EXIT_OK
    for view in views:
        _print_view(view, False)
        if args.changes:
            for change in view.changes:
                effect = f"  (no effect: {change.effect})" if change.effect else ""
                stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(change.at))
                print(f"    {stamp} {change.author} {change.op} "
                      f"{' '.join(change.handles) or change.name}{effect}")
    if not views:
        print("no groups yet: qsecret group create NAME MEMBER...")
    return EXIT_OK


def run_group_history(args: argparse.Namespace) -> int:
    """A group's messages from the local store (no network); our own with how many members
    got and read each ('qsecret recv' takes in the latest receipts)."""
    messenger = open_messenger(args)
    try:
        try:
            messages = messenger.group_history(args.group, args.limit)
        except MessengerError as exc:
            print(f"qsecret group history: {one_line(exc)}", file=sys.stderr)
            return 2
    finally:
        messenger.store.close()
    for message in messages:
        if args.json:
            print(json.dumps(message_json(message)), flush=True)
        else:
            print(message_line(message))
    return EXIT_OK


def message_json(message: MessageView) -> dict[str, Any]:
    """One group message as ``recv --json`` and ``group history --json`` print it."""
    out: dict[str, Any] = {"id": message.message_id, "from": message.peer,
                           "text": message.text, "time": message.timestamp,
                           "keys": message.sources, "mode": message.mode,
                           "group": message.group, "group_id": message.group_id}
    if message.receipts is not None:
        out |= {"delivered": message.receipts.delivered, "read": message.receipts.read,
                "recipients": message.receipts.recipients}
    return out


def message_line(message: MessageView) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(message.timestamp))
    who = "me" if message.outgoing else message.peer
    counts = f"    {message.receipts.describe()}" if message.receipts is not None else ""
    return f"[{stamp}] @{message.group} {who}: {message.text}{counts}"


def view_json(view: GroupView, *, changes: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": view.group_id, "name": view.name, "members": list(view.members),
        "admins": list(view.admins), "status": view.status, "removed_by": view.removed_by,
        "refused": view.refused, "sender_key_generation": view.sender_key_generation,
    }
    if changes:
        out["changes"] = [{"id": c.change_id, "op": c.op, "by": c.author,
                           "handles": list(c.handles), "name": c.name, "at": c.at,
                           "effect": c.effect} for c in view.changes]
    return out


def _print_view(view: GroupView, as_json: bool) -> None:
    if as_json:
        print(json.dumps(view_json(view)))
        return
    members = ", ".join(f"{m}*" if m in view.admins else m for m in view.members)
    status = "" if view.status == "member" else (
        f"  [you were removed by {view.removed_by}]" if view.status == "removed"
        else "  [you left]")
    refused = ""
    if view.refused:
        refused = "  refused: " + ", ".join(f"{k} {v}" for k, v in sorted(view.refused.items()))
    print(f"@{view.name} ({view.group_id[:8]}): {members}{status}{refused}")
