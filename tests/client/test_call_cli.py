"""'qsecret call' and 'qsecret answer' without a sound device: one clear line pointing at
--in/--out, before any profile is opened; bad options are refused by the parser."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _qsecret(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QSECRET_PASSPHRASE": "unused-passphrase"}
    return subprocess.run([sys.executable, "-m", "client", *args, "--data", str(data)],
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.skipif(importlib.util.find_spec("sounddevice") is not None,
                    reason="sounddevice is installed: a microphone may be there")
@pytest.mark.parametrize("command", [["call", "bob"], ["answer"]])
def test_no_microphone_is_a_clear_error_pointing_at_in_and_tone(
        command: list[str], tmp_path: Path) -> None:
    result = _qsecret(*command, "--out", str(tmp_path / "heard.wav"), data=tmp_path / "p")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "--in FILE.wav" in line and "--tone HZ" in line, line
    assert "Traceback" not in result.stderr


def test_an_unreadable_input_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "not-audio.wav"
    bad.write_bytes(b"this is not audio")
    result = _qsecret("call", "bob", "--in", str(bad), "--out", str(tmp_path / "o.wav"),
                      data=tmp_path / "p")
    assert result.returncode == 2
    assert "not-audio.wav" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("options", [["--duration", "0"], ["--tone", "5"],
                                     ["--tone", "440", "--mute"]])
def test_bad_call_options_are_refused(options: list[str], tmp_path: Path) -> None:
    result = _qsecret("call", "bob", *options, "--out", str(tmp_path / "o.wav"),
                      data=tmp_path / "p")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
