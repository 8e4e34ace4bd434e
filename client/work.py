"""A daemon-thread helper the commands share (light: send-file's first step imports it)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


def in_background(call: Callable[..., T], *args: Any, name: str = "background") -> Future[T]:
    """Run ``call`` in a daemon thread (an error exit never waits for it)."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(call(*args))
        except BaseException as exc:  # handed to whoever awaits the future
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True, name=name).start()
    return future
