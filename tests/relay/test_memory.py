"""relay.memory: the malloc settings apply on glibc and are skipped elsewhere."""

from __future__ import annotations

import ctypes
import platform
import sys

import pytest

from relay.memory import keep_freed_memory


def test_settings_apply_on_glibc_and_nowhere_else() -> None:
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    if glibc:
        assert hasattr(ctypes.CDLL(None), "mallopt")
    applied = keep_freed_memory()
    if not glibc:
        pytest.skip(f"malloc here is not glibc's ({platform.libc_ver()}): settings skipped")
    assert applied
