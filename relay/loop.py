"""Which asyncio event loop the relay runs on.

The relay spends most of its time in the event loop's own machinery (socket reads and
writes, callbacks), so uvloop (libuv) makes every envelope cheaper; it is a dependency on
platforms that have it. ``--loop asyncio`` runs on the standard loop instead (and is what
happens where uvloop is not installed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CHOICES = ("auto", "uvloop", "asyncio")


def available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(choice: str) -> str:
    """``auto`` -> ``uvloop`` when installed, else ``asyncio``; ``uvloop`` must be installed."""
    if choice not in CHOICES:
        raise ValueError(f"unknown event loop {choice!r} (choose from {', '.join(CHOICES)})")
    if choice == "auto":
        return "uvloop" if available() else "asyncio"
    if choice == "uvloop" and not available():
        raise ValueError("uvloop is not installed here: use --loop asyncio")
    return choice


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """``asyncio.run`` on the chosen loop."""
    if resolve(choice) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
