"""Configuration precedence and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from client.config import SETTINGS, ClientConfig, ConfigError, load_config


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
    config = ClientConfig(data_dir=tmp_path, downloads_dir='we"ird\\dir')
    config.save()
    assert load_config(tmp_path).downloads_dir == 'we"ird\\dir'


def test_bad_files_are_reported(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("relay_url = [unclosed")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path)
    (tmp_path / "config.toml").write_text('relay_ur = "typo"\n')
    with pytest.raises(ConfigError, match="unknown settings relay_ur"):
        load_config(tmp_path)


# -- written by tomli-w, every value checked on load --------------------------------------

HOSTILE_PATHS = [
    "/tmp/with\nnewline",
    'C:\\Users\\x\\"quoted"',
    "/tmp/x\"\n[evil]\nrelay_url = \"ws://evil:1\"\n",
    "'''\"\"\"\t# not a comment",
    "/tmp/ünïcödé/😀",
    "\r\n\x1b[31m\x7f",
]


@pytest.mark.parametrize("value", HOSTILE_PATHS)
def test_any_path_value_round_trips(tmp_path: Path, value: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS:
        monkeypatch.delenv(f"QSECRET_{name.upper()}", raising=False)
    config = ClientConfig(data_dir=tmp_path, downloads_dir=value, kme_ca=value, sae_cert=value,
                          sae_key=value, sae_id="sae-alice", relay_fingerprint="ab" * 32)
    config.save()
    loaded = load_config(tmp_path)
    assert loaded == config
    assert not (tmp_path / "config.toml.tmp").exists()


def test_the_policy_and_accept_values_are_those_the_messenger_knows() -> None:
    from client.config import AUTO_ACCEPT_MODES, QKD_POLICIES
    from client.messenger.transfers import AUTO_ACCEPT
    from keysource.mix import QkdPolicy

    assert set(QKD_POLICIES) == {p.value for p in QkdPolicy}
    assert AUTO_ACCEPT_MODES == AUTO_ACCEPT


# (setting, bad value as TOML, what the message must say)
BAD_VALUES = [
    ("relay_url", '"http://127.0.0.1:8765"', "must be a ws:// or wss:// URL"),
    ("relay_url", '"ws://"', "must be a ws:// or wss:// URL"),
    ("relay_url", '""', "must be a ws:// or wss:// URL"),
    ("relay_url", '"ws://127.0.0.1:99999"', "Port out of range"),
    ("relay_url", '"ws://host:1/\\nx"', "control characters"),
    ("relay_fingerprint", '"abcd"', "SHA-256 fingerprint"),
    ("kme_url", '"ftp://kme"', "must be a https:// or http:// URL"),
    ("sae_id", '"../x"', "must be an SAE_ID"),
    ("sae_id", '"sae-a\\n"', "control characters"),
    ("sae_id", '"' + "a" * 65 + '"', "65 characters"),
    ("qkd_policy", '"sometimes"', "must be one of prefer, require"),
    ("auto_accept", '"everything"', "must be one of never, verified, all"),
    ("downloads_dir", '"/tmp/a\\u0000b"', "NUL character"),
    ("auto_accept", "true", "must be a string, not boolean"),
    ("kme_url", "8443", "must be a string, not integer"),
    ("sae_cert", '["a"]', "must be a string, not array"),
    ("kme_ca", '"/pki/\\u0000ca.pem"', "NUL character"),
    ("sae_key", "{ path = 'k' }", "must be a string, not table"),
]
FIRST_PER_SETTING = list({name: (name, toml, message)
                          for name, toml, message in reversed(BAD_VALUES)}.values())


def test_every_setting_has_a_check_and_a_bad_value_case() -> None:
    assert set(SETTINGS) == {f.name for f in fields(ClientConfig)} - {"data_dir"}
    assert {name for name, _, _ in FIRST_PER_SETTING} == set(SETTINGS)


@pytest.mark.parametrize(("name", "toml", "message"), BAD_VALUES)
def test_each_bad_value_is_named_with_its_key(tmp_path: Path, name: str, toml: str,
                                              message: str) -> None:
    (tmp_path / "config.toml").write_text(f"{name} = {toml}\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    text = str(info.value)
    assert text.startswith(f"{tmp_path / 'config.toml'}: {name} = ") and message in text, text


def test_bad_values_from_the_environment_and_flags_are_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QSECRET_QKD_POLICY", "bogus")
    with pytest.raises(ConfigError, match=r"^\$QSECRET_QKD_POLICY: qkd_policy = 'bogus'"):
        load_config(tmp_path)
    monkeypatch.delenv("QSECRET_QKD_POLICY")
    with pytest.raises(ConfigError, match="^command line: relay_url = 'wss:/x'"):
        load_config(tmp_path, relay_url="wss:/x")


def test_a_bad_setting_is_never_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config.toml \(not written\): qkd_policy = 'x'"):
        ClientConfig(data_dir=tmp_path, qkd_policy="x").save()
    assert not (tmp_path / "config.toml").exists()


@pytest.mark.parametrize(("name", "toml", "message"), FIRST_PER_SETTING)
def test_a_real_qsecret_command_exits_2_naming_the_bad_key(tmp_path: Path, name: str,
                                                           toml: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(f"{name} = {toml}\n")
    before = (tmp_path / "config.toml").read_bytes()
    result = subprocess.run([sys.executable, "-m", "client", "contacts", "list",
                             "--data", str(tmp_path)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "QSECRET_PASSPHRASE": "unused-passphrase"})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"{name} = " in result.stderr and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "config.toml").read_bytes() == before
