"""Where a profile lives and which relay and KME it talks to.

Precedence: command-line flag > environment variable > the profile's
``config.toml`` > built-in defaults (everything on loopback, matching
``qsecret relay`` and ``qsecret kme pair`` defaults).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

from keysource.kme.sae_id import SAE_ID_RULE, sae_id_problem

ENV_PREFIX = "QSECRET_"
CONFIG_FILE = "config.toml"


@dataclass(frozen=True)
class ClientConfig:
    data_dir: Path
    # One relay, or several over one shared store, comma-separated (tried in turn).
    relay_url: str = "ws://127.0.0.1:8765"
    # Pinned SHA-256 of each self-signed relay certificate, in relay_url's order.
    relay_fingerprint: str = ""
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
        """Write every setting to ``config.toml`` (tomli-w: any string round-trips), checked
        first so a file that would not load is never written, and replaced atomically."""
        import tomli_w

        values = {item.name: getattr(self, item.name) for item in fields(self)
                  if item.name != "data_dir"}
        for name, value in values.items():
            _check(name, value, f"{self.config_path} (not written)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        text = ("# qsecret profile settings; environment variables QSECRET_* override these\n"
                + tomli_w.dumps(values))
        staged = self.config_path.with_name(CONFIG_FILE + ".tmp")
        staged.write_text(text, encoding="utf-8")
        os.replace(staged, self.config_path)

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


class ConfigError(Exception):
    """The configuration cannot be read; the message names the file and the problem."""


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("qsecret", appauthor=False))


def load_config(data_dir: Path | str | None = None, **overrides: str | None) -> ClientConfig:
    """Resolve the configuration of the profile in ``data_dir`` (flags as ``overrides``);
    every value is checked (:data:`SETTINGS`) and a bad one named with where it came from."""
    env = os.environ
    directory = Path(
        data_dir or env.get(f"{ENV_PREFIX}DATA_DIR") or default_data_dir()
    ).expanduser()
    config = ClientConfig(data_dir=directory)
    path = directory / CONFIG_FILE
    if path.exists():
        try:
            stored = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        unknown = set(stored) - set(SETTINGS)
        if unknown:
            raise ConfigError(f"{path}: unknown settings {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(SETTINGS)})")
        for name, value in stored.items():
            _check(name, value, str(path))
        config = replace(config, **stored)
    for name in SETTINGS:
        variable = ENV_PREFIX + name.upper()
        from_env = env.get(variable)
        if from_env is not None:
            _check(name, from_env, f"${variable}")
            config = replace(config, **{name: from_env})
    flags = {k: v for k, v in overrides.items() if v is not None}
    for name, value in flags.items():
        _check(name, value, "command line")
    return replace(config, **flags) if flags else config


# -- what each setting may hold -----------------------------------------------------------

QKD_POLICIES = ("prefer", "require")  # keysource.mix.QkdPolicy (a test keeps them equal)
AUTO_ACCEPT_MODES = ("never", "verified", "all")  # client.messenger.transfers.AUTO_ACCEPT


def _url(schemes: tuple[str, ...], example: str, *, empty: bool) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if not value and empty:
            return None
        wanted = f"a {' or '.join(s + '://' for s in schemes)} URL with a host (e.g. {example})"
        if any(c.isspace() or not c.isprintable() for c in value):
            return f"{wanted}; it contains spaces or control characters"
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as exc:
            return f"{wanted} ({exc})"
        if parts.scheme not in schemes or not parts.hostname:
            return wanted
        return None

    return check


def _relay_urls(value: str) -> str | None:
    """One ws:// or wss:// URL, or several comma-separated (relays over one store)."""
    one = _url(("ws", "wss"), "ws://127.0.0.1:8765", empty=False)
    parts = value.split(",")
    for part in parts:
        problem = one(part)
        if problem is not None:
            return problem + (", or several separated by commas" if len(parts) > 1 else "")
    if len(set(parts)) != len(parts):
        return "relay URLs, each listed once"
    return None


def _fingerprint(value: str) -> str | None:
    """Empty, or one pinned fingerprint per relay URL, comma-separated (empty entries are
    pinned on first use)."""
    from relay.wire.auth import parse_fingerprint

    for part in value.split(",") if value else []:
        if not part:
            continue
        try:
            parse_fingerprint(part)
        except ValueError:
            return ("a SHA-256 fingerprint: 64 hex digits, optionally as AB:CD:... or "
                    "sha256:... (one per relay URL, comma-separated), or empty")
    return None


def _sae_id(value: str) -> str | None:
    problem = sae_id_problem(value) if value else None
    return None if problem is None else f"an SAE_ID ({SAE_ID_RULE}) or empty: {problem}"


def _path(value: str) -> str | None:
    return "a file or folder path: it contains a NUL character" if "\0" in value else None


def _one_of(allowed: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in allowed else f"one of {', '.join(allowed)}"

    return check


SETTINGS: dict[str, Callable[[str], str | None]] = {
    "relay_url": _relay_urls,
    "relay_fingerprint": _fingerprint,
    "kme_url": _url(("https", "http"), "https://127.0.0.1:8443", empty=True),
    "sae_id": _sae_id,
    "kme_ca": _path,
    "sae_cert": _path,
    "sae_key": _path,
    "qkd_policy": _one_of(QKD_POLICIES),
    "downloads_dir": _path,
    "auto_accept": _one_of(AUTO_ACCEPT_MODES),
}
"""Each setting's check: None if a value is fine, else what the value must be."""


def _check(name: str, value: object, source: str) -> None:
    """Raise :class:`ConfigError` naming ``source``, the setting and the value if it is bad."""
    check = SETTINGS.get(name)
    if check is None:
        raise ConfigError(f"{source}: unknown setting {name} (known: {', '.join(SETTINGS)})")
    if not isinstance(value, str):
        kind = {bool: "boolean", int: "integer", float: "number", list: "array",
                dict: "table"}.get(type(value), type(value).__name__)
        raise ConfigError(f"{source}: {name} = {value!r}: must be a string, not {kind}")
    problem = check(value)
    if problem is not None:
        shown = value if len(value) <= 120 else value[:120] + "..."
        raise ConfigError(f"{source}: {name} = {shown!r}: must be {problem}")
