"""What 'qsecret' costs before a command runs: its parser must not import the messenger.

'qsecret send-file' hashes the files while the profile unlocks and the messenger is imported;
that only overlaps if building the parser left those imports for later.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
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
              "client.demo", "client.doctor", "importlib.metadata"]
    code = ("import json, sys; from client.cli import build_parser, _command_name; "
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
    code = ("import json, sys; import client.messenger.profile, client.files_cli; "
            f"print(json.dumps([m for m in {unwanted!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout) == []


def test_send_file_hashes_with_a_short_switch_interval_then_restores_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hash thread gets the GIL back quickly while the messenger loads; afterwards the
    interpreter's default switch interval applies again (the transfer runs under it)."""
    import argparse

    import client.files_cli as files_cli
    from client import parsers

    source = tmp_path / "file.bin"
    source.write_bytes(b"x" * 100_000)
    seen: dict[str, object] = {}

    def fake_run(args: argparse.Namespace, hashing: Any) -> int:
        seen["during"] = sys.getswitchinterval()
        seen["files"] = len(hashing.result(timeout=30).manifest.files)
        return 0

    monkeypatch.setattr(files_cli, "run_send_file", fake_run)
    before = sys.getswitchinterval()
    assert parsers._start_send_file(argparse.Namespace(paths=[str(source)])) == 0
    assert seen == {"during": parsers.HASHING_SWITCH_INTERVAL_S, "files": 1}
    deadline = time.monotonic() + 5  # the restoring callback runs on the hash thread
    while sys.getswitchinterval() != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sys.getswitchinterval() == before
