"""``qsecret send-file``, ``receive-files`` and ``transfers``: file transfer from a shell.
(``send_file`` starts listing the files before this module and the messenger load.)

Progress bars (rich, on standard error) show bytes, rate and ETA; ``--json`` prints one
JSON object per line on standard output instead, for scripts and tests. An interrupted
command leaves its transfer paused, never lost: any later ``qsecret`` run that goes online
(``transfers --resume``, ``receive-files``, ``chat``) continues it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from client.messenger.api import MessengerError, TransferEvent, TransferState, TransferView
from client.transfer import BuiltManifest, count_files, format_size

from .errors import EXIT_INTERRUPTED, EXIT_NOT_DONE, CliError
from .session import go_online, open_messenger

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

JSON_PROGRESS_EVERY_S = 0.5


# -- shared ------------------------------------------------------------------------------


def _describe(view: TransferView) -> dict[str, Any]:
    return {
        "transfer": view.transfer_id, "peer": view.peer, "outgoing": view.outgoing,
        "names": list(view.names), "files": view.files, "bytes": view.total_bytes,
        "done": view.done_bytes, "state": view.state.value, "detail": view.detail,
        "paths": list(view.paths), **({"group": view.group} if view.group else {}),
    }


class Reporter:
    """Turns TransferEvents into rich progress bars or JSON lines (one place for both)."""

    def __init__(self, json_lines: bool) -> None:
        self.json = json_lines
        self.progress: Progress | None = None
        if not json_lines:  # rich is loaded only for the bars (--json starts sooner)
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
            )
            self.progress.start()
        self.tasks: dict[str, TaskID] = {}
        self.states: dict[str, TransferState] = {}
        self.last_json: dict[str, float] = {}
        self.done: dict[str, int] = {}
        self.last_change = time.monotonic()  # when a state or a byte count last moved

    def line(self, event: str, view: TransferView, **extra: Any) -> None:
        if self.json:
            print(json.dumps({"event": event, **_describe(view), **extra}), flush=True)

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)
        elif not self.json:
            print(text, file=sys.stderr)

    def update(self, view: TransferView) -> None:
        previous = self.states.get(view.transfer_id)
        self.states[view.transfer_id] = view.state
        if previous is not view.state or self.done.get(view.transfer_id) != view.done_bytes:
            self.last_change = time.monotonic()
        self.done[view.transfer_id] = view.done_bytes
        arrow = "→" if view.outgoing else "←"
        if self.progress is not None and view.state is not TransferState.OFFERED:
            task = self.tasks.get(view.transfer_id)
            label = f"{arrow} {view.peer}: {view.title}"
            if task is None:
                task = self.progress.add_task(label, total=view.total_bytes)
                self.tasks[view.transfer_id] = task
            self.progress.update(task, completed=view.done_bytes, description=label)
        if previous is view.state:
            now = time.monotonic()
            if view.state is TransferState.SENDING and \
                    now - self.last_json.get(view.transfer_id, 0.0) >= JSON_PROGRESS_EVERY_S:
                self.last_json[view.transfer_id] = now
                self.line("progress", view, rate=round(view.rate_bytes_per_s))
            return
        if view.state is not TransferState.OFFERED:  # offers are announced by the commands
            self.line(view.state.value, view)
        who = f"{view.peer}"
        if view.state is TransferState.WAITING:
            self.say(f"{arrow} {view.title}: paused — {view.detail or 'waiting'}")
        elif view.state is TransferState.COMPLETE:
            where = f" → {', '.join(view.paths)}" if view.paths else ""
            self.say(f"{arrow} {view.title}: complete, verified (SHA-256){where}")
        elif view.state is TransferState.DECLINED:
            self.say(f"{arrow} {who} declined {view.title}: {view.detail}")
        elif view.state in (TransferState.CANCELLED, TransferState.FAILED):
            self.say(f"{arrow} {view.title}: {view.state.value}: {view.detail}")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _run(main: Any) -> int:
    try:
        return asyncio.run(main)
    except KeyboardInterrupt:
        print("interrupted: unfinished transfers are paused; 'qsecret transfers --resume' "
              "continues them", file=sys.stderr)
        return EXIT_INTERRUPTED


# -- send-file ---------------------------------------------------------------------------


def run_send_file(args: argparse.Namespace, listing: Future[BuiltManifest]) -> int:
    """Offer and send; ``listing`` (started by the parser's send-file) builds the manifest."""
    messenger = open_messenger(args)

    async def main() -> int:
        reporter = Reporter(args.json)
        done = asyncio.Event()
        mine: dict[str, TransferView] = {}

        def on_event(event: object) -> None:
            if isinstance(event, TransferEvent) and event.transfer.transfer_id in mine:
                mine[event.transfer.transfer_id] = event.transfer
                reporter.update(event.transfer)
                if event.transfer.state.finished:
                    done.set()

        messenger.subscribe(on_event)
        started = time.monotonic()
        await messenger.start()
        try:
            online = asyncio.ensure_future(messenger.wait_online(args.timeout))
            if not listing.done():
                reporter.say("listing the files...")
            try:
                built = await asyncio.wrap_future(listing)  # a TransferError: one line, status 2
            except BaseException:
                online.cancel()
                raise
            view = await _offer_while_logging_in(
                online, messenger.send_built(args.handle, built,
                                             limit_bytes_per_s=args.limit_rate,
                                             relay_timeout=args.timeout))
            mine[view.transfer_id] = view
            reporter.line("offered", view)
            size = format_size(view.total_bytes)
            if view.group:
                reporter.say(f"offered {view.title} ({count_files(view.files)}, {size}) to "
                             f"{args.handle}; uploading once, the relay keeps a copy for "
                             "each member")
            else:
                reporter.say(f"offered {view.title} ({count_files(view.files)}, {size}) to "
                             f"{args.handle}; waiting for them to accept")
            reporter.update(view)
            await done.wait()
            final = mine[view.transfer_id]
            if final.state is TransferState.COMPLETE:
                reporter.line("complete", final, seconds=round(time.monotonic() - started, 3))
                return 0
            return EXIT_NOT_DONE
        finally:
            reporter.stop()
            await messenger.stop()

    return _run(main())


async def _offer_while_logging_in(online: asyncio.Future[None],
                                  offering: Coroutine[Any, Any, TransferView]) -> TransferView:
    """Make the offer while the relay login (``online``) is under way: the session and the
    transfer's QKD keys (a KME request) need no relay, so they overlap the connection; the
    offer waits for the login inside ``send_built``. A failed login is the error reported
    (it explains a failed offer too); else the offer's own error."""
    sending = asyncio.ensure_future(offering)
    try:
        await asyncio.wait({online, sending}, return_when=asyncio.FIRST_EXCEPTION)
        await online  # raises a login refusal, also when the offer failed first
        return await sending
    finally:
        for task in (online, sending):
            task.cancel()
        await asyncio.gather(online, sending, return_exceptions=True)


# -- receive-files -----------------------------------------------------------------------


def run_receive_files(args: argparse.Namespace) -> int:
    settings: dict[str, str] = {}
    if args.downloads is not None:
        settings["downloads_dir"] = str(args.downloads.expanduser().resolve())
    auto = args.accept if args.accept in ("verified", "all") else "never"
    settings["auto_accept"] = auto
    interactive = args.accept == "ask" and sys.stdin.isatty() and not args.json
    messenger = open_messenger(args, **settings)

    async def main() -> int:
        reporter = Reporter(args.json)
        offers: asyncio.Queue[tuple[TransferView, bool]] = asyncio.Queue()  # (offer, stored)
        completed: set[str] = set()
        # Offers that came before this run (to a chat window, `recv`, an earlier
        # receive-files): the messenger auto-accepts only offers that arrive while it runs.
        stored = [v for v in messenger.transfers()
                  if not v.outgoing and v.state is TransferState.OFFERED]
        for view in stored:
            reporter.states[view.transfer_id] = view.state

        def on_event(event: object) -> None:
            if not isinstance(event, TransferEvent) or event.transfer.outgoing:
                return
            view = event.transfer
            first = view.transfer_id not in reporter.states
            reporter.update(view)
            if view.state is TransferState.OFFERED and first:
                offers.put_nowait((view, False))
            if view.state is TransferState.COMPLETE:
                completed.add(view.transfer_id)

        messenger.subscribe(on_event)
        await go_online(messenger, args.timeout)
        try:
            for view in stored:
                offers.put_nowait((view, True))
            while True:
                while not offers.empty():
                    view, was_stored = offers.get_nowait()
                    await _answer_offer(messenger, reporter, view, auto, interactive,
                                        was_stored)
                if args.count and len(completed) >= args.count:
                    return 0
                active = [v for v in messenger.transfers() if not v.outgoing
                          and v.state in (TransferState.SENDING, TransferState.WAITING)]
                idle = time.monotonic() - reporter.last_change
                if not args.follow and not args.count and not active and idle > 2.0:
                    return 0
                if not args.follow and idle > args.idle:
                    reporter.say(f"nothing moved for {args.idle:.0f}s: exiting (unfinished "
                                 "transfers continue on the next run)")
                    return 0 if not args.count else 1
                await asyncio.sleep(0.2)
        finally:
            reporter.stop()
            await messenger.stop()

    return _run(main())


async def _answer_offer(messenger: Any, reporter: Reporter, view: TransferView, auto: str,
                        interactive: bool, stored: bool) -> None:
    """Show an offer and accept or decline it as --accept says (asking in a terminal).
    ``stored``: it came before this run, so the messenger will not auto-accept it."""
    reporter.line("offer", view)
    reporter.say(f"{view.peer} offers {view.title} ({count_files(view.files)}, "
                 f"{format_size(view.total_bytes)})")
    if auto == "all" or (auto == "verified" and _verified(messenger, view.peer)):
        if stored:
            try:
                await messenger.accept_transfer(view.transfer_id)
            except MessengerError as exc:
                reporter.say(f"  not accepted: {exc}")
        return  # a new offer: the messenger accepts it by itself (auto_accept setting)
    if not interactive:
        reporter.say("  not accepted: run with --accept all, or accept in the TUI (Ctrl+T)")
        return
    answer = await asyncio.to_thread(input, "  accept? [y/N] ")
    try:
        if answer.strip().lower() in ("y", "yes"):
            await messenger.accept_transfer(view.transfer_id)
        else:
            await messenger.decline_transfer(view.transfer_id)
    except MessengerError as exc:
        reporter.say(f"  {exc}")


def _verified(messenger: Any, peer: str) -> bool:
    return any(c.handle == peer and c.verified for c in messenger.contacts())


# -- transfers ---------------------------------------------------------------------------


def run_transfers(args: argparse.Namespace) -> int:
    messenger = open_messenger(args)
    if not (args.resume or args.cancel or args.accept or args.decline):
        try:
            views = messenger.transfers()
        finally:
            messenger.store.close()
        for view in views:
            if args.json:
                print(json.dumps(_describe(view)))
            else:
                arrow = "→" if view.outgoing else "←"
                done, total = format_size(view.done_bytes), format_size(view.total_bytes)
                print(f"{view.transfer_id[:12]}  {arrow} {view.peer:<12} {view.state.value:<9} "
                      f"{done:>9} / {total:<9} {view.title}"
                      + (f"  ({view.detail})" if view.detail else ""))
        if not views and not args.json:
            print("no transfers")
        return 0

    async def main() -> int:
        reporter = Reporter(args.json)
        messenger.subscribe(lambda e: reporter.update(e.transfer)
                            if isinstance(e, TransferEvent) else None)
        await go_online(messenger, 30)
        try:
            one_shot = args.cancel or args.decline
            if one_shot or args.accept:
                prefix = (one_shot or args.accept).lower()
                matches = [v for v in messenger.transfers() if v.transfer_id.startswith(prefix)]
                if len(matches) != 1:
                    raise CliError(f"{prefix!r} matches {len(matches)} transfers")
                tid = matches[0].transfer_id
                if args.cancel:
                    await messenger.cancel_transfer(tid)
                elif args.decline:
                    await messenger.decline_transfer(tid)
                else:
                    await messenger.accept_transfer(tid)
                if one_shot:
                    await asyncio.sleep(0.5)  # let the message reach the relay
                    return 0
            while True:
                unfinished = [v for v in messenger.transfers() if not v.state.finished
                              and not (v.state is TransferState.OFFERED and not v.outgoing)]
                if not unfinished:
                    return 0
                if time.monotonic() - reporter.last_change > args.idle:
                    reporter.say(f"nothing moved for {args.idle:.0f}s; still unfinished: "
                                 f"{len(unfinished)}")
                    return 1
                await asyncio.sleep(0.2)
        finally:
            reporter.stop()
            await messenger.stop()

    return _run(main())
