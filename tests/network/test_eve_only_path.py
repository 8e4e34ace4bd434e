"""Eve on the only path (issue 16): real nodes x - m - y with emulated QKD links, an
intercept-resend eavesdropper on m~y, bob's only link. No QKD key reaches bob's node, so
alice (policy ``prefer``) sends with ML-KEM and X25519 and her messages say they are degraded;
carol (policy ``require``, on alice's node) is refused and nothing of hers leaves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from keysource import pq
from tests.conftest import degraded_sources
from tests.e2e.stack import Stack

from .conftest import start_network, stop_network

pytestmark = pytest.mark.slow

NODES = {"x": ["sae-alice", "sae-carol"], "m": [], "y": ["sae-bob"]}
USERS = {"alice": ("x", "prefer"), "carol": ("x", "require"), "bob": ("y", "prefer")}


def _received(stack: Stack, handle: str) -> list[dict[str, str]]:
    out = stack.cli(handle, "recv", "--json", check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_eve_on_the_only_path_degrades_prefer_and_refuses_require(tmp_path: Path) -> None:
    backend = "liboqs" if pq.backend_status("liboqs").available else "openssl"
    network = start_network(tmp_path / "net", "--frame-bits", "65536", "--keys-ready", "20",
                            nodes=NODES, links=[("x", "m"), ("m", "y", 1.0)])
    stack = Stack(tmp_path)
    try:
        # x's only link, x~m, is clean: its pool fills. m~y never gives a key.
        network.processes["x"].wait_for(r"^keys ready", timeout_s=300)
        stack.start_relay()
        for user, (node, policy) in USERS.items():
            stack.cli(user, "init", "--handle", user, "--sae-id", f"sae-{user}",
                      "--kme", network.url(node), "--kme-pki", str(network.pki.root),
                      "--qkd-policy", policy, check=True)
            stack.cli(user, "recv", check=True)  # its prekeys on the relay
        # carol's session with bob needs a QKD key: refused, and the 503 says why.
        refused = stack.cli("carol", "contacts", "add", "bob")
        assert refused.returncode != 0
        assert "QKD policy is 'require'" in refused.stderr, refused.stderr
        # (the attacked link's pool is empty, or its QBER already over the threshold)
        assert re.search(r"503: (no usable path from x to y|the key could not be relayed to "
                         r"y: m: 503: m~y)", refused.stderr), refused.stderr
        refused = stack.cli("carol", "send", "bob", "must not leave")
        assert refused.returncode != 0

        stack.cli("alice", "contacts", "add", "bob", check=True)
        stack.cli("alice", "send", "bob", "-", check=True,
                  stdin="\n".join(f"through eve {i}" for i in range(3)))
        got = _received(stack, "bob")  # alice's three, and nothing of carol's
        assert [m["text"] for m in got] == [f"through eve {i}" for i in range(3)]
        assert {m["keys"] for m in got} <= degraded_sources(backend), got
        # x tried to relay over m and was turned back at the attacked link each time.
        x_relay = network.stats("x")["relay"]
        assert x_relay["relayed"] == 0 and x_relay["failed"] > 0
        assert network.stats("y")["relay"]["received"] == 0
    finally:
        stack.stop()
        stop_network(network)
