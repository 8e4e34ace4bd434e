"""The relay's event loop choice: uvloop when installed, the standard loop on request."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from relay import loop as event_loop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_on_request() -> None:
    assert event_loop.run(_loop_module(), "asyncio").startswith("asyncio")


def test_auto_prefers_uvloop_when_installed() -> None:
    expected = "uvloop" if event_loop.available() else "asyncio"
    assert event_loop.resolve("auto") == expected
    assert event_loop.run(_loop_module(), "auto").startswith(expected)


def test_unknown_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown event loop"):
        event_loop.resolve("trio")


def test_relay_cli_says_which_loop_it_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "--port", "0", "--data", str(tmp_path), "--loop",
         "asyncio"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        assert any("event loop: asyncio" in line for line in lines), lines
    finally:
        process.terminate()
        process.wait(10)
