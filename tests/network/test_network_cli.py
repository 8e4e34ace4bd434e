"""``qsecret kme serve --topology`` and ``qsecret network``: wrong combinations get one clear
line and exit status 2, before anything starts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.kme.conftest import qsecret_cmd


@pytest.mark.parametrize(("args", "says"), [
    (["kme", "serve"], "serve needs --role alice|bob"),
    (["kme", "serve", "--topology", "metro", "--role", "alice"], "--role: not with --topology"),
    (["kme", "serve", "--topology", "metro", "--km", "3"], "--km: not with --topology"),
    (["kme", "serve", "--topology", "metro"], "--topology needs --node"),
    (["kme", "serve", "--topology", "metro", "--node", "hf-99"], "no node 'hf-99'"),
    (["kme", "serve", "--topology", "nowhere.toml", "--node", "a"], "cannot read topology"),
    (["kme", "serve", "--node", "hf-1"], "--node needs --topology"),
    (["network", "up", "--topology", "nowhere.toml"], "cannot read topology"),
])
def test_wrong_combinations_are_refused(args: list[str], says: str, tmp_path: Path) -> None:
    result = subprocess.run(qsecret_cmd(*args, "--data", str(tmp_path / "d")),
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr
    assert not (tmp_path / "d").exists()  # nothing was created


def test_status_without_a_network_says_how_to_start_one(tmp_path: Path) -> None:
    result = subprocess.run(qsecret_cmd("network", "status", "--data", str(tmp_path)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "qsecret network up" in result.stderr
