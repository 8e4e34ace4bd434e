"""``qsecret demo --topology`` (issue 16, item 4): the demo on the metro network, real
processes. alice, bob and carol sit at three different nodes, dave at alice's; the demo
waits for QKD keys, introduces every pair, prints how to open bob, carol and dave, and every
pair then chats with QKD+ML-KEM-768+X25519. SIGTERM stops the relay and every node."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from client.processes import ServiceProcess, port_free
from keysource.network.topology import builtin
from tests.conftest import active_full_sources
from tests.e2e.stack import PASSPHRASE, Stack, free_port

from .conftest import write_builtin

pytestmark = pytest.mark.slow

USERS = ("alice", "bob", "carol", "dave")
FULL = active_full_sources()  # QKD+ML-KEM-768+X25519, with liboqs its conservative KEM too


def test_the_demo_on_the_metro_network_lets_every_pair_chat(tmp_path: Path) -> None:
    topology = tmp_path / "metro.toml"
    ports = write_builtin(topology, "metro")
    places = {h: builtin("metro").node_of_sae(f"sae-{h}") for h in USERS}
    assert len({places["alice"], places["bob"], places["carol"]}) == 3
    assert places["dave"] == places["alice"]
    base = tmp_path / "demo"
    relay_port = free_port()
    demo = ServiceProcess("demo", ["demo", "--dir", str(base), "--relay-port", str(relay_port),
                                   "--topology", str(topology), "--no-tui"],
                          env={"QSECRET_PASSPHRASE": PASSPHRASE}, log=tmp_path / "demo.log")
    demo.start()
    try:
        demo.wait_for("Services running", timeout=400)
        printed = "\n".join(demo.lines)
        assert "not every link has QKD keys" not in printed, printed
        for handle in USERS[1:]:  # how to open each of the others
            assert re.search(rf"^  QSECRET_PASSPHRASE=\S+ .*chat --data \S*{handle}$",
                             printed, re.M), printed
        stack = Stack(base, relay_port=relay_port)
        for user in USERS:
            stack.cli(user, "recv", check=True)
        for earlier, later in itertools.combinations(USERS, 2):  # the demo's greetings
            greeting = stack.history(later, earlier)
            assert [m["text"] for m in greeting] and greeting[0]["keys"] in FULL, greeting
            stack.cli(later, "send", earlier, f"{later} to {earlier}", check=True)
        for user in USERS:
            stack.cli(user, "recv", check=True)
        for earlier, later in itertools.combinations(USERS, 2):
            view = stack.history(earlier, later)
            assert f"{later} to {earlier}" in [m["text"] for m in view], view
            assert all(m["keys"] in FULL for m in view), [m["keys"] for m in view]
    finally:
        demo.stop(timeout=60)
    assert "demo stopped: relay and network shut down" in demo.lines
    assert all(port_free(port) for port in [relay_port, *ports.values()])


@pytest.mark.parametrize("extra", [["--pair"], ["--eve-fraction", "1"], ["--port-a", "9441"]])
def test_options_of_the_pair_are_refused_with_a_topology(tmp_path: Path,
                                                         extra: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "client", "demo", "--dir", str(tmp_path),
                             "--topology", "metro", *extra], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "is for the KME pair demo" in result.stderr, result.stderr
    assert not any(tmp_path.iterdir())  # refused before anything started or was written
