"""The file-transfer commands' own parsing (the commands themselves run in tests/e2e)."""

from __future__ import annotations

import argparse

import pytest

from client.cli.parsers import _rate


@pytest.mark.parametrize(("text", "value"), [
    ("5MB", 5e6), ("5MB/s", 5e6), ("500kB", 5e5), ("2MiB", 2 * 1024**2), ("1.5g", 1.5e9),
    ("4096", 4096),
])
def test_rates(text: str, value: float) -> None:
    assert _rate(text) == value


@pytest.mark.parametrize("text", ["fast", "5XB", "-1MB", "0", "MB"])
def test_bad_rates_are_refused_with_the_reason(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _rate(text)
