"""Free loopback ports for the servers the tests start, chosen so that nothing can take one
between choosing it and the server binding it.

``bind(("127.0.0.1", 0))`` hands out a port from the kernel's ephemeral range, the same range
every outgoing connection takes its local port from: a relay connecting to Redis, or a client
to a KME, could take the port before the server that was promised it binds it ("address
already in use"). So ports come from below that range, where connect() never looks, and no
port is handed out twice in one test process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10000
_handed: set[int] = set()
_pick = random.Random()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A loopback TCP port nobody listens on now, outside the ephemeral range."""
    high = _ephemeral_low() - 1
    for _ in range(1000):
        port = _pick.randint(LOWEST, high)
        if port in _handed:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed.add(port)
        return port
    raise RuntimeError(f"no free loopback port between {LOWEST} and {high}")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports."""
    return [free_port() for _ in range(count)]
