"""The client's command-line parsers: init, chat, send, recv, export, contacts, send-file,
receive-files, transfers, backup, restore, call and answer.

Only argparse here. Each command's function lives in a module of this package by topic
(``profile``, ``chat``, ``messages``, ``contacts``, ``files``) and is imported by name when the
command runs, so 'qsecret --help' stays quick and 'qsecret send-file' starts listing its files
(``send_file``) before the messenger (a quarter of a second of imports) loads.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path

from .errors import EXIT_STATUS_HELP
from .help import HelpFormatter, examples

RECV_IDLE_S = 2.0
# recv waits this long (after the relay's backlog) for messages held for their keys: the
# inbox tries them again after 1, 3 and 7 s (client/messenger/inbox.py), and a QKD key
# relayed through trusted nodes usually reaches the KME within that.
RECV_HELD_WAIT_S = 8.0
IDLE_EXIT_S = 30.0

Command = Callable[[argparse.Namespace], int]
Subparsers = argparse._SubParsersAction  # type: ignore[type-arg]


def _later(module: str, name: str) -> Command:
    """``client.cli.<module>.<name>``, imported when the command runs."""

    def run(args: argparse.Namespace) -> int:
        function: Command = getattr(importlib.import_module(f"client.cli.{module}"), name)
        return function(args)

    return run


def _command(subparsers: Subparsers, name: str, help: str, description: str,
             *example_lines: str) -> argparse.ArgumentParser:
    """A sub-command whose --help says what it does, shows examples and the exit status."""
    epilog = EXIT_STATUS_HELP
    if example_lines:
        epilog = examples(*example_lines) + "\n\n" + epilog
    return subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                                 formatter_class=HelpFormatter)


def register(subparsers: Subparsers) -> None:
    init = _command(
        subparsers, "init", "create a profile: handle, passphrase, identity keys, KME enrolment",
        "Create a profile in --data (default: the platform data dir): identity keys "
        "(Ed25519 + ML-DSA-65, X25519), a prekey bundle, and the settings to reach the relay "
        "and this user's KME. The passphrase comes from $QSECRET_PASSPHRASE or a prompt. Enrol "
        "with a KME either with --kme-pki DIR (a KME PKI directory such as the one 'qsecret kme "
        "pair' creates: a client certificate is issued for --sae-id) or with "
        "--kme-ca/--sae-cert/--sae-key you were given. Then run 'qsecret recv' once: logging "
        "in publishes your prekeys, so that others can add you.",
        "qsecret init --handle alice --relay ws://127.0.0.1:8765 \\",
        "    --kme https://127.0.0.1:8441 --kme-pki ~/kme/pki",
        "qsecret init --handle bob --kme-ca ca.pem --sae-cert bob.pem --sae-key bob.key",
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
    init.set_defaults(func=_later("profile", "run_init"))

    chat = _command(
        subparsers, "chat", "open the chat TUI",
        "Open the Textual chat TUI (passphrase from $QSECRET_PASSPHRASE or asked on screen). "
        "F1 lists every key binding.",
        "qsecret chat",
        "qsecret chat --data ~/qsecret-bob",
    )
    _profile_args(chat)
    chat.set_defaults(func=_later("chat", "run_chat"))

    send = _command(
        subparsers, "send", "send a message (scriptable)",
        "Send TEXT to HANDLE and exit once the relay holds it durably. TEXT '-' sends each "
        "line of standard input as a message. Exit status 1 if any message was not sent. "
        "To a group, write @GROUP (its name or the start of its ID, 'qsecret group list'): the "
        "message is sealed once with your sender key and uploaded once for every member.",
        "qsecret send bob 'see you at noon'",
        "qsecret send @crew 'standup in 5'",
        "printf 'one\\ntwo\\n' | qsecret send bob - --json",
    )
    _profile_args(send)
    send.add_argument("handle", metavar="HANDLE",
                      help="the contact to send to, or @GROUP for a group")
    send.add_argument("text", metavar="TEXT", help="the message; '-' reads lines from stdin")
    send.add_argument("--json", action="store_true", help="print one JSON object per message")
    send.set_defaults(func=_later("messages", "run_send"))

    recv = _command(
        subparsers, "recv", "print received messages (scriptable)",
        "Connect, print every message that was waiting at the relay, and exit once all of "
        f"them are handled and no new one has come for {RECV_IDLE_S:.0f}s (if none arrives for "
        "--timeout seconds while some are still waiting, exit 1 and say how many: they stay "
        "queued). A message whose QKD keys (or group sender key) have not reached you yet is "
        f"waited for up to {RECV_HELD_WAIT_S:.0f}s more; one still waiting then is named on "
        "stderr and shown by a later recv. --follow keeps printing until Ctrl+C. Logging in "
        "also publishes "
        "this profile's prekeys (the first run after 'qsecret init' makes you addable). "
        "A group message is shown as '@GROUP sender: text'; a membership change as "
        "'@GROUP: alice added erin' (with --json: \"group\" and \"from\", or \"event\": "
        "\"group\").",
        "qsecret recv",
        "qsecret recv --follow --json",
    )
    _profile_args(recv)
    recv.add_argument("--follow", action="store_true", help="keep running")
    recv.add_argument("--json", action="store_true", help="one JSON object per line")
    _timeout_arg(recv, "give up connecting, or waiting for the next of the messages still at "
                       "the relay, after this many seconds (default 30)")
    recv.set_defaults(func=_later("messages", "run_recv"))

    export = _command(
        subparsers, "export", "print a conversation as text or JSON",
        "Print the conversation with HANDLE from the local store (no network).",
        "qsecret export bob > bob.txt",
        "qsecret export bob --json",
    )
    _profile_args(export)
    export.add_argument("handle", metavar="HANDLE", help="the contact whose conversation")
    export.add_argument("--json", action="store_true", help="JSON instead of text")
    export.set_defaults(func=_later("messages", "run_export"))

    contacts = _command(
        subparsers, "contacts", "add, list or verify contacts",
        "Manage contacts: 'add HANDLE' fetches their prekey bundle from the relay and opens a "
        "session (they must have logged in once, e.g. with 'qsecret recv'); 'list'; 'verify "
        "HANDLE' shows the safety number and QR code (--yes marks the contact verified once "
        "you compared them).",
        "qsecret contacts add bob",
        "qsecret contacts list --json",
        "qsecret contacts verify bob --yes",
    )
    contacts_sub = contacts.add_subparsers(dest="contacts_command", metavar="ACTION")
    add = contacts_sub.add_parser(
        "add", help="add a contact by handle", formatter_class=HelpFormatter,
        description="Fetch HANDLE's prekey bundle from the relay and open a session.",
        epilog=examples("qsecret contacts add bob") + "\n\n" + EXIT_STATUS_HELP)
    _profile_args(add)
    add.add_argument("handle", metavar="HANDLE", help="their handle at the relay")
    add.set_defaults(func=_later("contacts", "run_contacts_add"))
    listing = contacts_sub.add_parser(
        "list", help="list contacts", formatter_class=HelpFormatter,
        description="List contacts, whether each is verified and how many messages are unread "
                    "(local store, no network).")
    _profile_args(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_later("contacts", "run_contacts_list"))
    verify = contacts_sub.add_parser(
        "verify", help="show (and confirm) a safety number", formatter_class=HelpFormatter,
        description="Show the safety number shared with HANDLE, as digits and a QR code; "
                    "compare it with theirs (in person or on a call) and run again with --yes.",
        epilog=examples("qsecret contacts verify bob", "qsecret contacts verify bob --yes"))
    _profile_args(verify)
    verify.add_argument("handle", metavar="HANDLE", help="the contact to verify")
    verify.add_argument("--yes", action="store_true", help="mark the contact verified")
    verify.set_defaults(func=_later("contacts", "run_contacts_verify"))
    contacts.set_defaults(func=lambda args: contacts.print_help() or 2)

    _register_groups(subparsers)
    _register_files(subparsers)
    _register_backups(subparsers)
    _register_calls(subparsers)


def _register_groups(subparsers: Subparsers) -> None:
    group = _command(
        subparsers, "group", "create a group chat, change its members, list your groups",
        "Groups of up to 100 members. Every membership change is signed with your identity "
        "(Ed25519 + ML-DSA-65) and checked by every member; only an admin (the creator, and "
        "those promoted) may add, remove, rename or promote. Each member reads a group "
        "message with that sender's key, which reaches them through your pairwise session "
        "(QKD + ML-KEM-768 + X25519 keys); after any removal every member makes a new one, "
        "so a removed member reads nothing sent afterwards. GROUP is the group's name or "
        "the start of its ID. Send with 'qsecret send @GROUP TEXT'; 'qsecret recv' shows "
        "group messages and changes. Without the relay, a change is still made and its "
        "messages go at the next login.",
        "qsecret group create crew bob carol",
        "qsecret send @crew 'hello all'",
        "qsecret group add crew dave",
        "qsecret group remove crew carol",
        "qsecret group list --changes",
    )
    sub = group.add_subparsers(dest="group_command", metavar="ACTION")

    def action(name: str, help: str, description: str, *example_lines: str,
               run: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help, description=description,
                                formatter_class=HelpFormatter,
                                epilog=examples(*example_lines) + "\n\n" + EXIT_STATUS_HELP)
        _profile_args(parser)
        parser.set_defaults(func=_later("groups", run))
        return parser

    def changes(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the group as JSON")
        _timeout_arg(parser)

    create = action("create", "create a group with you as its admin",
                    "Create group NAME with MEMBERs (their identities are pinned as for "
                    "'contacts add': they must have logged in once). Each member gets the "
                    "signed group.", "qsecret group create crew bob carol",
                    run="run_group_create")
    create.add_argument("name", metavar="NAME", help="the group's name")
    create.add_argument("members", metavar="MEMBER", nargs="+", help="handles to add")
    group_help = "the group: its name, or the start of its ID ('qsecret group list')"
    members_help = "handles of members"
    changes(create)
    add = action("add", "add members (admins)", "Add MEMBERs to GROUP; they get the "
                 "group's whole signed history of changes.", "qsecret group add crew dave",
                 run="run_group_add")
    add.add_argument("group", metavar="GROUP", help=group_help)
    add.add_argument("members", metavar="MEMBER", nargs="+", help="handles to add")
    changes(add)
    remove = action("remove", "remove members (admins)", "Remove MEMBERs from GROUP. "
                    "Every remaining member makes a new sender key at once, so they read "
                    "nothing sent afterwards; they are told they were removed.",
                    "qsecret group remove crew carol", run="run_group_remove")
    remove.add_argument("group", metavar="GROUP", help=group_help)
    remove.add_argument("members", metavar="MEMBER", nargs="+", help="handles to remove")
    changes(remove)
    leave = action("leave", "leave a group", "Leave GROUP (the last admin names another "
                   "first, with 'group promote').", "qsecret group leave crew",
                   run="run_group_leave")
    leave.add_argument("group", metavar="GROUP", help=group_help)
    changes(leave)
    rename = action("rename", "rename a group (admins)", "Give GROUP a new NAME.",
                    "qsecret group rename crew 'night shift'", run="run_group_rename")
    rename.add_argument("group", metavar="GROUP", help=group_help)
    rename.add_argument("name", metavar="NAME", help="its new name")
    changes(rename)
    for name, verb in (("promote", "make MEMBERs admins"),
                       ("demote", "make MEMBERs admins no more")):
        parser = action(name, f"{verb} (admins)", f"{verb[0].upper()}{verb[1:]} of GROUP (a "
                        "group keeps at least one admin).", f"qsecret group {name} crew bob",
                        run=f"run_group_{name}")
        parser.add_argument("group", metavar="GROUP", help=group_help)
        parser.add_argument("members", metavar="MEMBER", nargs="+", help=members_help)
        changes(parser)
    listing = action("list", "list your groups (no network)", "Every group in the local "
                     "store: members (admins marked *), whether you were removed, and the "
                     "bad input refused in it, counted by reason.", "qsecret group list",
                     "qsecret group list --changes --json", run="run_group_list")
    listing.add_argument("--json", action="store_true", help="JSON instead of text")
    listing.add_argument("--changes", action="store_true",
                         help="also every membership change, and those that had no effect")
    history = action("history", "a group's messages, yours with delivered/read counts "
                     "(no network)", "GROUP's messages from the local store; each of yours "
                     "with how many members got it and read it (their receipts come in with "
                     "'qsecret recv').", "qsecret group history crew",
                     "qsecret group history crew --json --limit 20", run="run_group_history")
    history.add_argument("group", metavar="GROUP", help=group_help)
    history.add_argument("--json", action="store_true", help="one JSON object per line")
    history.add_argument("--limit", type=int, default=500, metavar="N",
                         help="the last N messages (default 500)")
    group.set_defaults(func=lambda args: group.print_help() or 2)


def _register_backups(subparsers: Subparsers) -> None:
    backup = _command(
        subparsers, "backup", "copy the profile's sealed store to FILE",
        "Write a consistent copy of the profile's store to FILE (SQLite's backup API; safe "
        "while qsecret runs). Everything in it is sealed under the passphrase, as in the "
        "store itself, so the copy is as safe as the store; it is checked to open with the "
        "passphrase before it is kept. Restore it with 'qsecret restore FILE'.",
        "qsecret backup ~/backups/qsecret-$(date +%F).sqlite3",
    )
    _profile_args(backup)
    backup.add_argument("file", metavar="FILE", type=Path, help="where to write the backup")
    backup.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    backup.set_defaults(func=_later("backup", "run_backup"))

    restore = _command(
        subparsers, "restore", "put a backup back as the profile's store",
        "Check that FILE (made by 'qsecret backup') opens with the passphrase, then make it "
        "the profile's store. An existing store is replaced only with --force, and is kept "
        "beside it (store.sqlite3.replaced-TIME), never deleted. Close every qsecret using "
        "the profile first. Messages received after the backup was made are not in it.",
        "qsecret restore ~/backups/qsecret-2026-12-01.sqlite3 --force",
    )
    _profile_args(restore)
    restore.add_argument("file", metavar="FILE", type=Path, help="the backup to restore")
    restore.add_argument("--force", action="store_true",
                         help="replace an existing store (kept beside, renamed)")
    restore.set_defaults(func=_later("backup", "run_restore"))


def _register_files(subparsers: Subparsers) -> None:
    send = _command(
        subparsers, "send-file", "send files or folders, end-to-end encrypted",
        "Offer PATH... (files and whole folders) to HANDLE and send them once accepted, with a "
        "progress bar; exits when every file is verified at the other end (status 1 if "
        "declined, cancelled or failed). If HANDLE is offline the relay holds the chunks (up "
        "to its quota). Ctrl+C pauses: 'qsecret transfers --resume' continues. To @GROUP: "
        "the offer goes to every member through your pairwise sessions, the chunks are "
        "sealed and uploaded once, and the relay keeps a copy for each member (offline ones "
        "get theirs when back); it exits once the relay holds the whole upload.",
        "qsecret send-file bob report.pdf photos/",
        "qsecret send-file bob big.iso --limit-rate 5MB --json",
        "qsecret send-file @team slides.pdf",
    )
    _profile_args(send)
    send.add_argument("handle", metavar="HANDLE",
                      help="the contact to send to, or @GROUP for every member of a group")
    send.add_argument("paths", metavar="PATH", nargs="+", help="files and folders to send")
    send.add_argument("--json", action="store_true", help="JSON lines instead of a progress bar")
    _timeout_arg(send)
    send.add_argument("--limit-rate", type=_rate, default=0.0, metavar="RATE",
                      help="send at most RATE bytes per second, e.g. 5MB or 500kB")
    send.set_defaults(func=_later("send_file", "start_send_file"))

    receive = _command(
        subparsers, "receive-files", "accept and receive incoming files",
        "Go online, show file offers and receive the accepted ones into the downloads folder "
        "(never outside it). Exits when nothing has moved for --idle seconds (default "
        f"{IDLE_EXIT_S:.0f}), after --count transfers, or never with --follow.",
        "qsecret receive-files",
        "qsecret receive-files --accept verified --follow",
        "qsecret receive-files --accept all --count 1 --downloads ~/in --json",
    )
    _profile_args(receive)
    receive.add_argument("--accept", choices=["ask", "verified", "all", "never"],
                         default="ask",
                         help="ask (default; in a terminal), verified: auto-accept verified "
                              "contacts, all: accept everything, never: only list offers")
    receive.add_argument("--downloads", type=Path, help="where files land "
                         "(default: the profile's downloads_dir, or DATA/downloads)")
    receive.add_argument("--count", type=int, default=0,
                         help="exit after this many transfers completed")
    receive.add_argument("--follow", action="store_true", help="keep running")
    receive.add_argument("--idle", type=float, default=IDLE_EXIT_S,
                         help="exit when nothing moved for this many seconds")
    receive.add_argument("--json", action="store_true", help="JSON lines")
    _timeout_arg(receive)
    receive.set_defaults(func=_later("files", "run_receive_files"))

    transfers = _command(
        subparsers, "transfers", "list, resume or cancel file transfers",
        "List transfers (offline). --resume goes online and drives every unfinished transfer "
        "until it ends or nothing moves for --idle seconds (status 1 if some remain "
        "unfinished); --cancel ID cancels one (both sides are told); --accept ID and "
        "--decline ID answer an incoming offer. ID is any unique prefix of a transfer id.",
        "qsecret transfers",
        "qsecret transfers --resume",
        "qsecret transfers --cancel 3f2a",
    )
    _profile_args(transfers)
    transfers.add_argument("--resume", action="store_true")
    transfers.add_argument("--cancel", metavar="ID", help="cancel a transfer (id prefix)")
    transfers.add_argument("--accept", metavar="ID", help="accept an incoming offer")
    transfers.add_argument("--decline", metavar="ID", help="decline an incoming offer")
    transfers.add_argument("--idle", type=float, default=IDLE_EXIT_S)
    transfers.add_argument("--json", action="store_true")
    transfers.set_defaults(func=_later("files", "run_transfers"))


def _register_calls(subparsers: Subparsers) -> None:
    call = _command(
        subparsers, "call", "call a contact (voice, end-to-end encrypted)",
        "Call HANDLE: Opus voice in 20 ms frames sealed with SFrame under keys mixed from "
        "fresh QKD keys, a fresh ML-KEM-768 encapsulation and X25519 (rekeyed every 60 s). "
        "HANDLE must be online ('qsecret answer', 'qsecret chat' or 'qsecret recv "
        "--follow'): if not, the call ends at once and a missed call waits for them. The "
        "call ends when either side hangs up (Ctrl+C here), after --duration seconds, or once "
        "the --in file has been sent. Sound comes from the microphone unless --in, --tone "
        "or --mute is given, and goes to the speaker unless --out is; without a sound device "
        "(needs qsecret[audio] and PortAudio) use --in/--tone and --out. Exit status 1 if "
        "the call was not answered.",
        "qsecret call bob --in speech.wav --out heard.wav",
        "qsecret call bob --tone 440 --duration 10 --json",
        "qsecret call bob            # microphone and speaker",
    )
    _profile_args(call)
    call.add_argument("handle", metavar="HANDLE", help="the contact to call")
    _call_audio_args(call)
    call.add_argument("--rekey-every", type=_positive, default=60.0, metavar="S",
                      help="new keys (fresh QKD, ML-KEM-768 and X25519) every S seconds "
                           "(default 60, at least 1)")
    _timeout_arg(call)
    call.set_defaults(func=_later("calls", "run_call"))

    answer = _command(
        subparsers, "answer", "wait for a call and answer it",
        "Go online, wait for an incoming call (up to --timeout seconds) and answer the first "
        "one; it runs until either side hangs up (Ctrl+C here) or --duration passes. Sound "
        "options as for 'qsecret call'. Exit status 1 if no call was answered.",
        "qsecret answer --out heard.wav --mute",
        "qsecret answer --in reply.wav --out heard.wav --json",
    )
    _profile_args(answer)
    _call_audio_args(answer)
    _timeout_arg(answer, "give up waiting for a call after this many seconds (default 60)")
    answer.set_defaults(func=_later("calls", "run_answer"), timeout=60.0)


def _call_audio_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--in", dest="input", type=Path, metavar="FILE",
                        help="send this audio file (WAV or any format PyAV reads) instead of "
                             "the microphone")
    source.add_argument("--tone", type=float, metavar="HZ",
                        help="send a sine tone of HZ instead of the microphone")
    source.add_argument("--mute", action="store_true", help="send silence (no microphone)")
    parser.add_argument("--out", type=Path, metavar="FILE.wav",
                        help="write what the other side says to this WAV file (48 kHz mono) "
                             "instead of the speaker")
    parser.add_argument("--duration", type=_positive, metavar="S",
                        help="hang up this many seconds after the call is answered")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per event; the last has the call's statistics "
                             "and key sources")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _profile_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="profile directory ($QSECRET_DATA_DIR)")
    parser.add_argument("--relay", dest="relay_url",
                        help="relay URL, or several relays over one store comma-separated "
                             "($QSECRET_RELAY_URL)")
    parser.add_argument("--kme", dest="kme_url", help="KME URL ($QSECRET_KME_URL)")


def _timeout_arg(parser: argparse.ArgumentParser,
                 text: str = "give up connecting after this many seconds (default 30)") -> None:
    parser.add_argument("--timeout", type=float, default=30.0, help=text)


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
          "kib": 1024, "mib": 1 << 20, "gib": 1 << 30}


def _rate(text: str) -> float:
    """'5MB' or '5MB/s' -> 5e6 bytes per second (argparse prints the refusal)."""
    number = text.strip().lower().rstrip("/s")
    digits = number.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = number[len(digits):]
    try:
        value = float(digits) * _UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate like 5MB or 500kB") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the rate must be positive")
    return value
