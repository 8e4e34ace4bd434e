"""Shared test helpers."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from keysource import pq

# A runner may start the suite with SIGINT ignored (a background job of a non-interactive
# shell does), and every process a test starts would inherit that: Ctrl+C (SIGINT) sent to
# `qsecret call` would then do nothing. With a handler here instead, a child's exec resets
# SIGINT to the default, as in a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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


# -- end-to-end tests on each PQ backend present ----------------------------------------
#
# Real processes pick their backend at start: QSECRET_DISABLE_LIBOQS=1 keeps liboqs out,
# and without it a process uses liboqs when the library is found (OQS_INSTALL_PATH). A
# module of end-to-end tests runs once per backend (its services and profiles made anew);
# the liboqs run skips with the reason when liboqs is absent, or fails under
# QSECRET_REQUIRE_OQS=1.

PQ_BACKENDS = ("openssl", "liboqs")
CORE_SOURCES = "QKD+ML-KEM-768+X25519"


def use_pq_backend(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every process started from now on (relay, KMEs, clients) use backend ``name``.

    This process reads the same variable: what it cached about the backends is dropped with
    each change, so a status taken while liboqs was disabled never hides liboqs later.
    """
    if name == "liboqs":
        monkeypatch.delenv("QSECRET_DISABLE_LIBOQS", raising=False)
        pq.forget_backends()
        require_liboqs()
    else:
        monkeypatch.setenv("QSECRET_DISABLE_LIBOQS", "1")
        pq.forget_backends()


def full_sources(backend: str) -> frozenset[str]:
    """The key labels of messages protected by every source a ``backend`` profile offers:
    QKD + ML-KEM-768 + X25519, and with liboqs the conservative KEM of the handshake too
    (ratchet turns after it mix ML-KEM, QKD and X25519)."""
    if backend == "openssl":
        return frozenset({CORE_SOURCES})
    from client.protocol.bundle import conservative_kem_available

    conservative = conservative_kem_available()
    assert conservative is not None, "liboqs is loaded but offers no conservative KEM"
    return frozenset({CORE_SOURCES, f"QKD+ML-KEM-768+{conservative}+X25519"})


def active_full_sources() -> frozenset[str]:
    """``full_sources`` of the backend this process, and the processes it starts, use (for
    tests that do not take the ``pq_backend`` fixture)."""
    return full_sources("liboqs" if pq.backend_status("liboqs").available else "openssl")


def degraded_sources(backend: str) -> frozenset[str]:
    """The key labels of messages sent without QKD keys (policy ``prefer``)."""
    return frozenset(f"{label.removeprefix('QKD+')} (degraded: no QKD)"
                     for label in full_sources(backend))


@pytest.fixture(scope="module", params=PQ_BACKENDS)
def pq_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The backend of this module's processes (use it autouse in an end-to-end conftest)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_pq_backend(request.param, monkeypatch)
        yield request.param
    pq.forget_backends()  # the variable is restored: so is what this process sees
