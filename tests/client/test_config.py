"""Configuration precedence and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.config import ClientConfig, ConfigError, load_config


def test_defaults_are_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RELAY_URL", "KME_URL", "DATA_DIR"):
        monkeypatch.delenv(f"QSECRET_{name}", raising=False)
    config = load_config(tmp_path)
    assert config.relay_url.startswith("ws://127.0.0.1:")
    assert config.kme_url.startswith("https://127.0.0.1:")
    assert config.data_dir == tmp_path


def test_precedence_flag_over_env_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ClientConfig(data_dir=tmp_path, relay_url="ws://file:1", kme_url="https://file:2").save()
    monkeypatch.delenv("QSECRET_KME_URL", raising=False)
    monkeypatch.setenv("QSECRET_RELAY_URL", "ws://env:1")
    config = load_config(tmp_path)
    assert config.relay_url == "ws://env:1"
    assert config.kme_url == "https://file:2"
    assert load_config(tmp_path, relay_url="ws://flag:1").relay_url == "ws://flag:1"


def test_data_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QSECRET_DATA_DIR", str(tmp_path / "p"))
    assert load_config().data_dir == tmp_path / "p"


def test_round_trip_with_quotes(tmp_path: Path) -> None:
    config = ClientConfig(data_dir=tmp_path, sae_id='we"ird\\id')
    config.save()
    assert load_config(tmp_path).sae_id == 'we"ird\\id'


def test_bad_files_are_reported(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("relay_url = [unclosed")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path)
    (tmp_path / "config.toml").write_text('relay_ur = "typo"\n')
    with pytest.raises(ConfigError, match="unknown settings relay_ur"):
        load_config(tmp_path)
