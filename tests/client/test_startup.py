"""What 'qsecret' costs before a command runs: its parser must not import the messenger.

'qsecret send-file' lists the files while the profile unlocks and the messenger is imported;
that only overlaps if building the parser left those imports for later.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HEAVY = ["client.messenger.service", "client.messenger.profile", "client.transfer.receiver",
         "client.transfer.keys", "httpx", "textual",
         "keysource.kme.client", "numpy"]


def test_building_the_parser_leaves_the_messenger_unimported() -> None:
    code = ("import json, sys; from client.cli import build_parser; build_parser(); "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout) == []


def test_the_builtin_command_table_matches_the_entry_points() -> None:
    """Each built-in command is registered by the entry point the fast path loads."""
    import argparse
    from importlib.metadata import entry_points

    from client.cli import BUILTIN_COMMANDS

    registered: dict[str, str] = {}
    for entry in entry_points(group="qsecret.commands"):
        subparsers = argparse.ArgumentParser().add_subparsers()
        entry.load()(subparsers)
        registered.update(dict.fromkeys(subparsers.choices, entry.value))
    assert registered == BUILTIN_COMMANDS


def test_a_builtin_command_loads_only_its_own_package() -> None:
    """'qsecret send-file' builds its parser without the relay, the KME or the QKD code."""
    others = ["relay.cli", "relay.config", "keysource.kme.cli", "keysource.qkd.cli",
              "client.cli.demo", "client.cli.doctor", "client.cli.files", "client.cli.session",
              "importlib.metadata"]
    code = ("import json, sys; from client.cli.entry import build_parser, _command_name; "
            "argv = ['send-file', 'bob', 'x']; "
            "args = build_parser(_command_name(argv)).parse_args(argv); "
            f"print(json.dumps([args.command, [m for m in {others + HEAVY!r} "
            "if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout) == ["send-file", []]


def test_help_without_a_command_lists_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "client", "--help"], capture_output=True,
                         text=True, timeout=60, check=True)
    for command in ("send-file", "relay", "kme", "eve", "demo", "doctor", "init"):
        assert command in out.stdout


def test_the_messenger_loads_without_certificate_issuing_qr_code_or_httpx() -> None:
    """Only enrolment ('init --kme-pki', 'kme pair') issues certificates, only a safety
    number screen draws a QR code, and the KME client speaks HTTP with h11 (httpx brings its
    command-line client along); every messenger start would pay for loading them, and
    send-file's start is on a transfer's clock."""
    unwanted = ["cryptography.x509", "segno", "keysource.kme.pki", "httpx", "anyio", "click"]
    code = ("import json, sys; import client.messenger.profile, client.cli.files; "
            f"print(json.dumps([m for m in {unwanted!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout) == []


def test_send_file_leaves_the_switch_interval_to_the_entry_point(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Library code changes no process-wide interpreter setting: send-file's start (listing
    thread, then the command) runs under whatever switch interval the process has. The
    interval is read on this thread after the listing has finished, so nothing races."""
    import argparse

    import client.cli.files as files
    from client.cli.send_file import start_send_file

    source = tmp_path / "file.bin"
    source.write_bytes(b"x" * 100_000)
    seen: dict[str, object] = {}

    def command(args: argparse.Namespace, listing: Any) -> int:
        seen["during"] = sys.getswitchinterval()
        seen["files"] = len(listing.result(timeout=30).manifest.files)
        return 0

    monkeypatch.setattr(files, "run_send_file", command)
    odd = 0.0123  # an interval nothing in the project would choose
    before = sys.getswitchinterval()
    sys.setswitchinterval(odd)
    try:
        assert start_send_file(argparse.Namespace(paths=[str(source)])) == 0
        after = sys.getswitchinterval()
    finally:
        sys.setswitchinterval(before)
    assert seen == {"during": odd, "files": 1}
    assert after == odd


def test_the_entry_point_shortens_the_switch_interval_for_send_file_only() -> None:
    """'qsecret send-file' runs with the short interval from its first line; a server
    ('qsecret relay', 'kme') and every other command keep the interpreter's default."""
    code = ("import json, sys; from client.cli import entry; seen = {}; "
            "entry.run = lambda args, parser: seen.setdefault(args.command, "
            "sys.getswitchinterval()) and 0; "
            "default = sys.getswitchinterval(); "
            "entry.main(['doctor']); entry.main(['send-file', 'bob', 'x']); "
            "print(json.dumps([default, seen]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    default, seen = json.loads(out.stdout)
    from client.cli.entry import SWITCH_INTERVAL_S

    assert seen == {"doctor": default, "send-file": SWITCH_INTERVAL_S["send-file"]}
