"""The TUI's network screen (F2, or the command palette) against a real small network run by
``qsecret network up``: a square x - m - y - z - x of emulated QKD links, an eavesdropper on
z~y. The screen shows every link with its km, rate, QBER and pool, the alarm of z~y, every
node with its SAEs and relay counts, and the path alice's keys with bob took (around the
attacked link, through m). The figures come from the source ``qsecret network status`` uses.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from textual.command import CommandPalette
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from client.config import load_config
from client.messenger.profile import ProfileGate, open_profile
from client.tui.app import QsecretApp
from client.tui.screens.network import NetworkScreen, sparkline
from keysource.kme.network_status import NetworkSource
from tests.client.pilot_helpers import online, until
from tests.e2e.stack import PASSPHRASE, Stack
from tests.kme.conftest import KmeProcess, qsecret_cmd

from .conftest import write_topology

pytestmark = pytest.mark.slow

NODES = {"x": ["sae-alice"], "m": [], "y": ["sae-bob"], "z": []}
LINKS = [("x", "m"), ("m", "y"), ("x", "z"), ("z", "y", 1.0)]  # eve in z, on z~y
SIZE = (160, 50)


def _cells(screen: NetworkScreen, table: str) -> dict[str, list[str]]:
    """A table's rows by their first cell, as text."""
    rows = screen.query_one(f"#network-{table}", DataTable)
    out = {}
    for index in range(rows.row_count):
        cells = [str(c) for c in rows.get_row_at(index)]
        out[cells[0]] = cells
    return out


def _text(screen: NetworkScreen, widget: str) -> str:
    return str(screen.query_one(f"#network-{widget}", Static).render())


def _ready(screen: NetworkScreen) -> bool:
    """Both links of the clean path hold keys and the attacked link's alarm is up."""
    links = _cells(screen, "links")
    return (len(links) == 4 and all(links[name][6].isdigit() and int(links[name][6]) >= 12
                                    for name in ("m~x", "m~y"))
            and links["y~z"][7].startswith("ALARM"))


async def _open_network(pilot: Pilot) -> NetworkScreen:
    await pilot.press("f2")
    await until(pilot, lambda: isinstance(pilot.app.screen, NetworkScreen)
                and bool(pilot.app.screen.query("#network-path")))
    screen = pilot.app.screen
    assert isinstance(screen, NetworkScreen)
    return screen


async def test_the_network_screen_shows_links_nodes_alarm_and_key_path(tmp_path: Path
                                                                       ) -> None:
    topology = tmp_path / "square.toml"
    write_topology(topology, NODES, LINKS)
    data = tmp_path / "net"
    proc = subprocess.Popen(
        qsecret_cmd("network", "up", "--topology", str(topology), "--data", str(data),
                    "--frame-bits", "65536", "--interval", "0"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    up = KmeProcess(proc)
    up.start_reader()
    stack = Stack(tmp_path)
    try:
        up.wait_for(r"^network ready: 4/4 nodes serving", timeout_s=120)
        stack.start_relay()
        for user, node in (("alice", "x"), ("bob", "y")):
            port = write_port(topology, node)
            stack.cli(user, "init", "--handle", user, "--sae-id", f"sae-{user}",
                      "--kme", f"https://127.0.0.1:{port}", "--kme-pki", str(data / "pki"),
                      "--qkd-policy", "require", check=True)
        stack.cli("bob", "recv", check=True)  # his prekeys on the relay
        config = load_config(stack.profile("alice"), relay_url=stack.relay_url)
        source = NetworkSource.for_profile(config.kme_ca, config.sae_cert, config.sae_key)
        assert source is not None and source.data == data.resolve()  # found from the PKI
        alice = open_profile(config, PASSPHRASE)
        app = QsecretApp(ProfileGate(config), export_dir=tmp_path / "exports",
                         messenger=alice, network=source)
        async with app.run_test(size=SIZE) as pilot:
            chat = await online(pilot)
            screen = await _open_network(pilot)
            assert "open a conversation" in _text(screen, "path")
            await until(pilot, lambda: _ready(screen), timeout=300)
            assert "4/4 nodes up" in _text(screen, "title")
            assert "ALARM on y~z" in _text(screen, "alarm")
            links = _cells(screen, "links")
            assert links["m~x"][1] == "5" and links["m~x"][7] == "up"
            assert float(links["m~x"][2]) >= 0 and links["m~x"][4].endswith("%")
            nodes = _cells(screen, "nodes")
            assert nodes["x"][2] == "sae-alice" and nodes["y"][2] == "sae-bob"
            assert all(row[7] == "up" for row in nodes.values())
            await pilot.press("escape")
            await until(pilot, lambda: pilot.app.screen is chat)

            await alice.add_contact("bob")  # QKD keys, relayed x -> m -> y (require)
            chat.open_conversation("bob")
            await until(pilot, lambda: chat.peer == "bob")
            # The palette's entry opens the screen on bob's conversation.
            await pilot.press("ctrl+p")
            await until(pilot, lambda: isinstance(app.screen, CommandPalette))
            await pilot.press(*[c if c != " " else "space" for c in "qkd network"])
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(pilot.app.screen, NetworkScreen)
                        and bool(pilot.app.screen.query("#network-path")))
            screen = pilot.app.screen
            assert isinstance(screen, NetworkScreen)
            assert _text(screen, "path") == (
                "Keys with bob: alice@x → m → bob@y  (2 hops; trusted: m)")
            await until(pilot, lambda: _cells(screen, "nodes").get("x", ["0"] * 8)[3] != "0"
                        and _cells(screen, "nodes")["m"][4] != "0")
            await pilot.press("f2")  # F2 again: back
            await until(pilot, lambda: pilot.app.screen is chat)
            await alice.stop()
    finally:
        stack.stop()
        up.stop(signal.SIGTERM)


def write_port(topology: Path, node: str) -> int:
    """The HTTPS port write_topology gave ``node``."""
    from keysource.network.topology import load

    return load(str(topology)).node(node).port


def test_sparklines_scale_to_their_top() -> None:
    assert sparkline([]) == ""
    assert sparkline([0.0, 0.0]) == "▁▁"
    assert sparkline([0.0, 5.0, 10.0]) == "▁▅█"
    assert sparkline([0.25, 0.5], top=0.25) == "██"  # over the top: the top bar
    assert len(sparkline([1.0] * 100, width=24)) == 24
