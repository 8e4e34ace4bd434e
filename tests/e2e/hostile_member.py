"""A hostile group member's client, run as its own process by the group e2e tests.

It is the real messenger of a real profile (its identity, its pairwise sessions with QKD
keys, its relay login), driven to send what an honest client never sends: a membership
change forged in an admin's name (signed with the member's own key: a bad signature), a
change the member has no right to make (signed properly, but they are no admin), a replay of
an old valid change, and group receipts for messages that do not exist. Each goes through
the pairwise session like any group payload; the script prints one JSON line of what it sent.

    python -m tests.e2e.hostile_member --data DIR --relay URL GROUP ACTION [ARGS] --to H...

ACTION: ``forge ADMIN TARGET`` (ADMIN "removes" TARGET, signed by us), ``unauthorised
TARGET`` (we remove TARGET, signed by us), ``replay HANDLE`` (the old ``add`` of HANDLE
again), ``receipt GROUP_ID ID...`` (a read receipt for IDs; GROUP is then ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from client.cli.session import go_online, open_messenger  # noqa: E402
from client.group.roster import Change, Op  # noqa: E402
from client.messenger import payload  # noqa: E402
from client.messenger.api import ConversationId  # noqa: E402


def _changes(messenger: Any, args: argparse.Namespace) -> tuple[bytes, list[bytes], str]:
    """(group ID, encoded changes, what they are) for a membership ACTION."""
    group = messenger.groups.find(args.group)
    log = group.session.log
    at = int(time.time() * 1000)
    if args.action == "forge":
        admin, target = args.args
        change = Change.make(messenger.identity, group_id=group.group_id, op=Op.REMOVE,
                             author=admin, parents=log.heads(), targets=[target], at=at)
        return group.group_id, [change.encode()], change.id.hex()
    if args.action == "unauthorised":
        (target,) = args.args
        change = Change.make(messenger.identity, group_id=group.group_id, op=Op.REMOVE,
                             author=messenger.handle, parents=log.heads(), targets=[target],
                             at=at)
        return group.group_id, [change.encode()], change.id.hex()
    if args.action == "replay":
        (handle,) = args.args
        old = [c for c in log.order() if c.op is Op.ADD and handle in dict(c.members)]
        return group.group_id, [old[0].encode()], old[0].id.hex()
    raise SystemExit(f"unknown action {args.action!r}")


async def main(args: argparse.Namespace) -> None:
    messenger = open_messenger(argparse.Namespace(data=args.data, relay_url=args.relay,
                                                  kme_url=None))
    await go_online(messenger, 15)
    try:
        await messenger.caught_up(15)
        if args.action == "receipt":
            group_id, ids = bytes.fromhex(args.args[0]), args.args[1:]
            bodies: list[payload.Payload] = [payload.group_receipt(group_id, "read", ids)]
            sent = ",".join(ids)
        else:
            group_id, changes, sent = _changes(messenger, args)
            bodies = [payload.group_changes(group_id, changes)]
        for handle in args.to:
            await messenger.ensure_session(ConversationId.direct(handle))
            for body in bodies:
                await messenger.send_pairwise(ConversationId.direct(handle), body, wait=True)
        print(json.dumps({"action": args.action, "sent": sent, "to": args.to}), flush=True)
    finally:
        await messenger.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--relay", required=True)
    parser.add_argument("--to", nargs="+", required=True)
    parser.add_argument("group")
    parser.add_argument("action")
    parser.add_argument("args", nargs="*")
    asyncio.run(main(parser.parse_args()))
