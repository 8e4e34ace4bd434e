"""Where a profile lives and which relay and KME it talks to.

Precedence: command-line flag > environment variable > the profile's
``config.toml`` > built-in defaults (everything on loopback, matching
``qsecret relay`` and ``qsecret kme pair`` defaults).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import platformdirs

ENV_PREFIX = "QSECRET_"
CONFIG_FILE = "config.toml"


@dataclass(frozen=True)
class ClientConfig:
    data_dir: Path
    relay_url: str = "ws://127.0.0.1:8765"
    relay_fingerprint: str = ""  # pinned SHA-256 of a self-signed relay certificate
    kme_url: str = "https://127.0.0.1:8443"
    sae_id: str = ""
    kme_ca: str = ""  # CA certificate that signed the KME's server certificate
    sae_cert: str = ""  # this SAE's client certificate and key, for mutual TLS
    sae_key: str = ""
    qkd_policy: str = "prefer"
    downloads_dir: str = ""  # where received files land; empty: DATA_DIR/downloads
    auto_accept: str = "never"  # incoming files: never (ask) | verified (contacts) | all

    @property
    def downloads_path(self) -> Path:
        return Path(self.downloads_dir).expanduser() if self.downloads_dir else (
            self.data_dir / "downloads")

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_FILE

    def save(self) -> None:
        """Write the non-default settings as flat TOML (strings only)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = ["# qsecret profile settings; environment variables QSECRET_* override these"]
        for item in fields(self):
            if item.name == "data_dir":
                continue
            value = str(getattr(self, item.name))
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{item.name} = "{escaped}"')
        self.config_path.write_text("\n".join(lines) + "\n")

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


class ConfigError(Exception):
    """The configuration cannot be read; the message names the file and the problem."""


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("qsecret", appauthor=False))


def load_config(data_dir: Path | str | None = None, **overrides: str | None) -> ClientConfig:
    """Resolve the configuration of the profile in ``data_dir`` (flags as ``overrides``)."""
    env = os.environ
    directory = Path(
        data_dir or env.get(f"{ENV_PREFIX}DATA_DIR") or default_data_dir()
    ).expanduser()
    config = ClientConfig(data_dir=directory)
    path = directory / CONFIG_FILE
    if path.exists():
        try:
            stored = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        known = {f.name for f in fields(ClientConfig)} - {"data_dir"}
        unknown = set(stored) - known
        if unknown:
            raise ConfigError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
        config = replace(config, **{k: str(v) for k, v in stored.items()})
    for item in fields(ClientConfig):
        if item.name == "data_dir":
            continue
        from_env = env.get(ENV_PREFIX + item.name.upper())
        if from_env is not None:
            config = replace(config, **{item.name: from_env})
    flags = {k: v for k, v in overrides.items() if v is not None}
    return replace(config, **flags) if flags else config
