"""``qsecret network up | status``: one process per node, a status table, a node killed
alone, and every node stopped with the launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from keysource.kme.client import SaeClient
from keysource.kme.pki import Pki
from tests.kme.conftest import KmeProcess, qsecret_cmd

from .conftest import LINKS, NODES, write_topology


def _status(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(qsecret_cmd("network", "status", "--data", str(data)),
                          capture_output=True, text=True, timeout=60)


def test_network_up_runs_every_node_and_reports_them(tmp_path: Path) -> None:
    topology = tmp_path / "chain.toml"
    ports = write_topology(topology, NODES, LINKS)
    data = tmp_path / "net"
    proc = subprocess.Popen(
        qsecret_cmd("network", "up", "--topology", str(topology), "--data", str(data),
                    "--frame-bits", "65536", "--keys-ready", "10", "--interval", "0"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    up = KmeProcess(proc)
    up.start_reader()
    try:
        up.wait_for(r"^network keys ready: every link pool holds 10 keys", timeout_s=120)
        table = up.wait_for(r"network test-chain: 3/3 nodes up")
        assert table
        status = _status(data)
        assert status.returncode == 0, status.stdout + status.stderr
        for link in ("m~x", "m~y"):
            assert any(line.split()[0] == link and line.endswith(" up")
                       for line in status.stdout.splitlines()), status.stdout
        pki = Pki(data / "pki")
        paths = {sae: pki.sae(sae) for sae in ("sae-x", "sae-y")}
        with SaeClient(f"https://127.0.0.1:{ports['x']}", ca=pki.ca_cert,
                       cert=paths["sae-x"].cert, key=paths["sae-x"].key) as x, \
                SaeClient(f"https://127.0.0.1:{ports['y']}", ca=pki.ca_cert,
                          cert=paths["sae-y"].cert, key=paths["sae-y"].key) as y:
            keys = x.get_enc_keys("sae-y", number=2)
            assert [k.key for k in y.get_dec_keys("sae-x", [k.key_ID for k in keys])] == [
                k.key for k in keys]
        state = json.loads((data / "network.json").read_text())
        pids = {name: node["pid"] for name, node in state["nodes"].items()}
        os.kill(pids["m"], signal.SIGKILL)  # one node killed alone: the others go on
        up.wait_for(r"^node m exited \(-9\); start it again alone with: qsecret kme serve")
        status = _status(data)
        assert status.returncode == 1
        assert "2/3 nodes up" in status.stdout and "node down" in status.stdout
    finally:
        up.stop(signal.SIGTERM)
    assert "network stopped" in up.lines[-1]
    for name in ("x", "y"):  # stopped with the launcher
        try:
            os.kill(pids[name], 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"node {name} still runs")
