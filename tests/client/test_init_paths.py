"""``qsecret init --kme-pki DIR`` with a relative DIR: the profile works from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.ports import free_port


def _qsecret(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QSECRET_PASSPHRASE": "correct horse battery staple"}
    return subprocess.run([sys.executable, "-m", "client", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_relative_kme_pki_is_saved_as_absolute_paths(tmp_path: Path) -> None:
    made = _qsecret(tmp_path, "kme", "pki", "init", "--dir", "kme/pki")
    assert made.returncode == 0, made.stderr
    port = free_port()
    init = _qsecret(tmp_path, "init", "--data", "alice", "--handle", "alice",
                    "--relay", f"ws://127.0.0.1:{port}", "--kme", f"https://127.0.0.1:{port}",
                    "--kme-pki", "kme/pki", "--sae-id", "sae-alice")
    assert init.returncode == 0, init.stderr
    config = tomllib.loads((tmp_path / "alice" / "config.toml").read_text())
    for name in ("kme_ca", "sae_cert", "sae_key"):
        path = Path(config[name])
        assert path.is_absolute(), (name, path)
        assert path.is_file(), (name, path)
    assert Path(config["kme_ca"]) == (tmp_path / "kme" / "pki" / "ca.pem").resolve()
