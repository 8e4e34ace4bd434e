"""Readers for NIST-style known-answer files shipped in the cryptography-vectors package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cryptography_vectors

VECTORS = Path(cryptography_vectors.__file__).parent


def read_rsp(relative: str) -> Iterator[dict[str, str]]:
    """Yield each ``key = value`` block of a ``.rsp`` file as a dict."""
    block: dict[str, str] = {}
    for line in (VECTORS / relative).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            if block:
                yield block
                block = {}
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        if key == "count" and block:
            yield block
            block = {}
        block[key] = value.strip()
    if block:
        yield block
