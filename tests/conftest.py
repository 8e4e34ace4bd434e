"""Shared test helpers."""

from __future__ import annotations

import os

import pytest

from keysource import pq


def require_liboqs() -> None:
    """Skip (with the reason) when liboqs is absent; fail instead under QSECRET_REQUIRE_OQS=1."""
    status = pq.backend_status("liboqs")
    if status.available:
        return
    message = f"liboqs backend unavailable: {status.detail}"
    if os.environ.get("QSECRET_REQUIRE_OQS") == "1":
        pytest.fail(f"{message} (QSECRET_REQUIRE_OQS=1 makes this a failure)")
    pytest.skip(message)


@pytest.fixture
def liboqs() -> None:
    require_liboqs()
