"""Login and signature checks: the waiting half of the connection core's login.

Signature checks run in a thread pool (the ML-DSA verify releases the GIL), so the
loop keeps answering pings during login storms; the core
(:class:`relay.wire.server.ServerConnection`) decides everything else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from keysource.pq import InvalidKey, InvalidSignature, hybrid_signature
from relay.limits import RegistrationLimit
from relay.metrics import Metrics
from relay.routing import Router
from relay.session import Session
from relay.store import BindStatus, Store
from relay.wire.server import LoginAttempt

log = logging.getLogger("qsecret.relay")
T = TypeVar("T")


class Verifier:
    """Hybrid signature checks off the event loop."""

    def __init__(self, threads: int) -> None:
        self.scheme = hybrid_signature()
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="relay-verify")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def check(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        try:
            await self.run(self.scheme.verify, public_key, message, signature)
        except (InvalidSignature, InvalidKey):
            return False
        return True

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


async def log_in(session: Session, attempt: LoginAttempt, *, verifier: Verifier, store: Store,
                 router: Router[Session], metrics: Metrics,
                 max_sessions: int,
                 registrations: RegistrationLimit | None = None) -> int | None:
    """Verify, bind the handle, join the router and answer ``auth_ok``; or refuse (a handle
    with ``max_sessions`` connections here already: close 1013, its sessions untouched).

    The first login of a handle registers it: ``registrations`` bounds how many new
    handles one address may register per window (checked only for a handle not yet bound).
    """
    frame, core = attempt.frame, session.core
    if not await verifier.check(frame.identity, attempt.message, frame.sig):
        return _failed(session, "auth_failed", "signature did not verify")
    if registrations is not None and await store.identity_of(frame.handle) is None:
        address = _address(session)
        if not registrations.take(address):
            metrics.count("qsecret_relay_registrations_refused_total")
            wait = registrations.retry_after(address)
            return _failed(session, "too_many_registrations",
                           f"this address registered {registrations.limit} new handles within "
                           f"{registrations.window:.0f} s; {frame.handle!r} is not registered, "
                           f"try again in {wait:.0f} s")
    status = await store.bind_identity(frame.handle, frame.identity)
    if status is BindStatus.MISMATCH:
        return _failed(session, "handle_taken",
                       f"handle {frame.handle!r} belongs to another identity")
    queued = await store.queue_depth(frame.handle)
    prekeys = await store.prekey_count(frame.handle)
    if session.closing:
        return None
    # Checked with no await before the join: two logins cannot both pass it.
    if len(router.sessions(frame.handle)) >= max_sessions:
        metrics.count("qsecret_relay_auth_total", "result", "too_many_sessions")
        close = core.login_over_cap(frame.handle, max_sessions)
        session.post_core()
        return close
    core.login_ok(frame, new=status is BindStatus.NEW, queued=queued, prekeys=prekeys)
    # Until its drain has looked at the spool, file frames for it are spooled (order).
    session.spool_draining = True
    router.join(frame.handle, session)
    metrics.count("qsecret_relay_auth_total", "result", "ok")
    session.post_core()
    log.debug("authenticated handle=%s new=%s queued=%d", frame.handle,
              status is BindStatus.NEW, queued)
    session.need_drain = True
    session.wake.set()
    return None


def _address(session: Session) -> str:
    """The connecting address (host only), as the registration limit counts it."""
    peer = session.ws.remote_address
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


def _failed(session: Session, code: str, message: str) -> int | None:
    close = session.core.login_failed(code, message)
    session.post_core()
    return close


__all__ = ["Verifier", "log_in"]
