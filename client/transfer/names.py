"""Safe landing: whatever the sender named a file, it lands inside the downloads folder.

Names in a manifest are untrusted. ``safe_components`` turns one into a relative path that is
safe on POSIX and Windows alike (no ``..``, no absolute path or drive letter, no NUL or control
characters, no device names such as ``CON`` or ``COM1``, no bidi tricks, no overlong names).
It neutralises rather than rejects, so a hostile offer still lands -- renamed, and visibly so.
``land_file`` moves a verified file into place without ever overwriting an existing file
unless the caller asked for it: by default the name becomes ``name (1).ext``.
"""

from __future__ import annotations

import enum
import errno
import os
import re
import unicodedata
from pathlib import Path

from .errors import UnsafeName

# Where the receiver keeps partial files and progress; a sender cannot land a file there.
PARTIAL_DIR_NAME = ".qsecret-partial"
MAX_COMPONENT_BYTES = 255  # NAME_MAX on Linux, macOS and NTFS (in UTF-16 units, close enough)
MAX_DEPTH = 64
MAX_PATH_BYTES = 2048
FALLBACK_NAME = "unnamed"
MAX_NUMBERED_ATTEMPTS = 10_000

_WINDOWS_RESERVED_CHARS = re.compile(r'[<>:"|?*\\]')
# Bidi overrides/isolates and marks can make "gpj.exe" display as "exe.jpg".
_BIDI_CONTROLS = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_DEVICE_NAMES = (
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$"}
    | {f"COM{d}" for d in "0123456789\u00b9\u00b2\u00b3"}
    | {f"LPT{d}" for d in "0123456789\u00b9\u00b2\u00b3"}
)
_DRIVE = re.compile(r"^[A-Za-z]:")
_DOUBLE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst")


class OnConflict(enum.Enum):
    """What to do when the landing name already exists."""

    RENAME = "rename"  # default: "name (1).ext"
    OVERWRITE = "overwrite"  # only on the user's explicit choice
    FAIL = "fail"


def _clean_component(component: str) -> str:
    text = "".join("_" if ord(ch) < 32 or ord(ch) == 127 else ch for ch in component)
    text = _BIDI_CONTROLS.sub("_", text)
    text = _WINDOWS_RESERVED_CHARS.sub("_", text)
    # Windows silently drops trailing dots and spaces, which turns "... " into "..".
    text = text.rstrip(". ")
    if text in ("", ".", ".."):
        return ""
    stem = text.split(".", 1)[0].rstrip(" ").upper()
    if stem in _DEVICE_NAMES:
        text = "_" + text
    return _truncate(text, MAX_COMPONENT_BYTES)


def _truncate(name: str, limit: int) -> str:
    """Shorten ``name`` to ``limit`` UTF-8 bytes, keeping a short extension."""
    if len(name.encode()) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode()) > 32:
        stem, ext = name, ""
    else:
        ext = "." + ext
    budget = limit - len(ext.encode())
    encoded = stem.encode()[:budget]
    return encoded.decode("utf-8", errors="ignore") + ext


def safe_components(name: str) -> tuple[str, ...]:
    """The components of ``name`` made safe to join under a downloads folder.

    Separators are ``/`` and ``\\``; ``.``/``..``/empty components and a leading drive letter are
    dropped, so absolute and traversal paths become relative ones. Never returns an empty tuple.
    """
    if not isinstance(name, str):
        raise UnsafeName(f"a file name must be text, got {type(name).__name__}")
    text = unicodedata.normalize("NFC", name)
    text = text.replace("\x00", "_")
    if _DRIVE.match(text):
        text = text[2:]
    parts = [_clean_component(part) for part in re.split(r"[/\\]", text)]
    parts = [part for part in parts if part]
    if len(parts) > MAX_DEPTH:
        raise UnsafeName(f"file name {name[:80]!r} is nested {len(parts)} deep (limit {MAX_DEPTH})")
    if not parts:
        parts = [FALLBACK_NAME]
    if parts[0].lower().startswith(PARTIAL_DIR_NAME):
        parts[0] = "_" + parts[0]
    if len("/".join(parts).encode()) > MAX_PATH_BYTES:
        raise UnsafeName(f"file name {name[:80]!r}... is longer than {MAX_PATH_BYTES} bytes")
    return tuple(parts)


def numbered(name: str, number: int) -> str:
    """``report.pdf`` -> ``report (1).pdf``; ``a.tar.gz`` -> ``a (1).tar.gz``."""
    lower = name.lower()
    for suffix in _DOUBLE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return _truncate(f"{name[: -len(suffix)]} ({number}){name[-len(suffix):]}",
                             MAX_COMPONENT_BYTES)
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return _truncate(f"{name} ({number})", MAX_COMPONENT_BYTES)
    return _truncate(f"{stem} ({number}).{ext}", MAX_COMPONENT_BYTES)


def is_inside(root: Path, path: Path) -> bool:
    """True when ``path`` (symlinks resolved) is ``root`` or below it."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def reserve_directory(downloads: Path, name: str) -> str:
    """Create ``downloads/name`` (or ``name (1)``, ...) exclusively and return the name used.

    Used for the top folder of a directory transfer, so a tree never merges into an
    existing folder of the same name.
    """
    for attempt in range(MAX_NUMBERED_ATTEMPTS):
        candidate = name if attempt == 0 else numbered(name, attempt)
        try:
            (downloads / candidate).mkdir(mode=0o755)
            return candidate
        except FileExistsError:
            continue
    raise UnsafeName(f"no free folder name near {name!r} in {downloads}")


def _link_no_clobber(source: Path, target: Path) -> None:
    """Atomically create ``target`` from ``source`` only if it does not exist."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError as exc:  # filesystems without hard links (FAT, some network mounts)
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                             errno.EMLINK, errno.ENOSYS):
            raise
        if target.exists() or target.is_symlink():
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        os.rename(source, target)
        return
    os.unlink(source)


def land_file(
    source: Path,
    downloads: Path,
    components: tuple[str, ...],
    on_conflict: OnConflict = OnConflict.RENAME,
) -> Path:
    """Move verified ``source`` to ``downloads/components``; return where it landed."""
    target = downloads.joinpath(*components)
    # Checked before and after creating folders: a symlink already in the downloads folder
    # must not carry a file (or a new folder) elsewhere.
    if not is_inside(downloads, target.parent):
        raise UnsafeName(f"{'/'.join(components)!r} would land outside {downloads}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not is_inside(downloads, target.parent):
        raise UnsafeName(f"{'/'.join(components)!r} would land outside {downloads}")
    if on_conflict is OnConflict.OVERWRITE:
        if target.is_dir() and not target.is_symlink():
            raise FileExistsError(errno.EISDIR, "a folder has this name", str(target))
        if target.is_symlink():
            target.unlink()
        os.replace(source, target)
        return target
    for attempt in range(MAX_NUMBERED_ATTEMPTS):
        candidate = target if attempt == 0 else target.with_name(numbered(target.name, attempt))
        try:
            _link_no_clobber(source, candidate)
            return candidate
        except FileExistsError:
            if on_conflict is OnConflict.FAIL:
                raise FileExistsError(
                    errno.EEXIST, "not overwriting an existing file", str(candidate)
                ) from None
    raise UnsafeName(f"no free name near {target.name!r} in {target.parent}")
