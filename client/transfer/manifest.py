"""The transfer manifest: what is offered (names and sizes), and how it is chunked.

The manifest travels inside an end-to-end encrypted message and is bound into every file key
(its exact encoded bytes go into the key-derivation transcript), so the relay can neither read
nor alter it, and a chunk sealed for one manifest never opens under another.

Encoding: canonical CBOR (RFC 8949 §4.2.1 deterministic encoding, via cbor2), a map with short
keys and an explicit version::

    {"v": 2, "id": bstr(16), "suite": "AES-256-GCM/STREAM-v1", "chunk": uint,
     "qkd": [tstr key_ID, ...], "files": [[tstr path, uint size], ...]}

No file's SHA-256 is in the offer (version 2): hashing every file before the first chunk cost
about a second per GiB. The sender hashes each file as it sends it and puts the SHA-256 in
the file's sealed final record (the last chunk, see ``stream.py``); the receiver hashes what
it writes and compares before the file lands. Version 1 offers (from qsecret before this
change) listed ``[path, size, sha256]`` and had no final record: an offer of version 1 is
refused with "update qsecret", while a transfer of version 1 persisted before an update
(``decode(..., stored=True)``) still resumes and is checked against its listed hashes.

Paths are the sender's relative paths joined with ``/``; they are untrusted on the receiving
side and pass through ``names.safe_components`` before anything touches the disk.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import cbor2

from relay.wire.binary import MAX_BINARY_PAYLOAD

from .errors import ManifestError, OutdatedOffer, SourceError
from .names import numbered

MANIFEST_VERSION = 2
LEGACY_MANIFEST_VERSION = 1  # files carry their SHA-256 in the offer; no final record
SUITE = "AES-256-GCM/STREAM-v1"
TRANSFER_ID_BYTES = 16
SHA256_BYTES = 32
KiB = 1024
MiB = 1024 * KiB
# A sealed chunk frame is the chunk plus a 31-byte header and a 16-byte GCM tag (stream.py);
# a file's last chunk also carries its SHA-256 (the final record).
CHUNK_FRAME_OVERHEAD = 47 + SHA256_BYTES
MAX_USEFUL_CHUNK_SIZE = 1 * MiB


def chunk_size_for_payload(max_payload: int) -> int:
    """The largest 4 KiB-aligned chunk whose sealed frame fits in ``max_payload`` bytes."""
    return (max_payload - CHUNK_FRAME_OVERHEAD) // (4 * KiB) * (4 * KiB)


# Measured with tests/bench/bench_transfer.py --core-only: the core gains ~25 % from 252 KiB to
# 1 MiB chunks and nothing beyond; the relay's bulk frames carry 256 KiB today, so 252 KiB.
DEFAULT_CHUNK_SIZE = min(MAX_USEFUL_CHUNK_SIZE, chunk_size_for_payload(MAX_BINARY_PAYLOAD))
MIN_CHUNK_SIZE = 4 * KiB
MAX_CHUNK_SIZE = 8 * MiB
MAX_FILES = 100_000
MAX_CHUNKS_PER_FILE = 2**32  # the STREAM counter is 32 bits
MAX_PATH_CHARS = 4096
MAX_QKD_KEY_IDS = 64
MAX_KEY_ID_CHARS = 128
MAX_MANIFEST_BYTES = 32 * MiB


@dataclass(frozen=True)
class FileEntry:
    """One offered file: its relative path as the sender named it and its size.

    ``sha256`` is set only in a version-1 manifest (see the module docstring).
    """

    path: str
    size: int
    sha256: bytes | None = None

    def chunk_count(self, chunk_size: int) -> int:
        """At least one chunk, so an empty file still carries a last-chunk flag."""
        return max(1, -(-self.size // chunk_size))


@dataclass(frozen=True)
class Manifest:
    """Everything the receiver needs to decide, derive keys and verify what arrives."""

    transfer_id: bytes
    chunk_size: int
    files: tuple[FileEntry, ...]
    qkd_key_ids: tuple[str, ...] = ()
    suite: str = SUITE
    version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def final_record_bytes(self) -> int:
        """Bytes after the data in each file's last chunk: its SHA-256 (version 2), or none."""
        return 0 if self.version == LEGACY_MANIFEST_VERSION else SHA256_BYTES

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files)

    def chunk_count(self, file_index: int) -> int:
        return self.files[file_index].chunk_count(self.chunk_size)

    def chunk_length(self, file_index: int, chunk_index: int) -> int:
        """Plaintext length of one chunk (the last one may be short or empty)."""
        entry = self.files[file_index]
        start = chunk_index * self.chunk_size
        return max(0, min(self.chunk_size, entry.size - start))

    def with_qkd_key_ids(self, key_ids: Iterable[str]) -> Manifest:
        """The same manifest naming the QKD keys mixed into its file keys."""
        return replace(self, qkd_key_ids=tuple(key_ids))

    def encode(self) -> bytes:
        """Canonical CBOR bytes; the same manifest always encodes to the same bytes."""
        return cbor2.dumps(
            {
                "v": self.version,
                "id": self.transfer_id,
                "suite": self.suite,
                "chunk": self.chunk_size,
                "qkd": list(self.qkd_key_ids),
                "files": [[f.path, f.size, f.sha256] if f.sha256 is not None
                          else [f.path, f.size] for f in self.files],
            },
            canonical=True,
        )

    def digest(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()

    @classmethod
    def decode(cls, data: bytes, *, stored: bool = False) -> Manifest:
        """Parse and validate untrusted manifest bytes; raise ManifestError with the reason.

        ``stored``: the bytes come from this side's own records (a transfer persisted
        before an update), so a version-1 manifest is read too; an offer is refused.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ManifestError("a manifest must be bytes")
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest of {len(data)} bytes exceeds {MAX_MANIFEST_BYTES}")
        try:
            raw = cbor2.loads(bytes(data))
        except Exception as exc:  # cbor2 raises several types for malformed input
            raise ManifestError(f"manifest is not valid CBOR: {exc}") from None
        if not isinstance(raw, dict):
            raise ManifestError("manifest must be a CBOR map")
        version = raw.get("v")
        if version == LEGACY_MANIFEST_VERSION and not stored:
            tid = raw.get("id")
            raise OutdatedOffer(
                "the offer comes from an older qsecret (transfer manifest version 1, which "
                "lists every file's SHA-256 up front): ask the sender to update qsecret",
                tid if isinstance(tid, bytes) and len(tid) == TRANSFER_ID_BYTES else None,
            )
        if version not in (MANIFEST_VERSION, LEGACY_MANIFEST_VERSION):
            raise ManifestError(
                f"manifest version {version!r} is not supported (this qsecret reads version "
                f"{MANIFEST_VERSION}); ask the sender to update or update qsecret"
            )
        width = 3 if version == LEGACY_MANIFEST_VERSION else 2
        shape = "[path, size, sha256]" if width == 3 else "[path, size]"
        expected = {"v", "id", "suite", "chunk", "qkd", "files"}
        if set(raw) != expected:
            raise ManifestError(f"manifest fields {sorted(map(str, raw))} != {sorted(expected)}")
        files_raw = raw["files"]
        if not isinstance(files_raw, list):
            raise ManifestError("manifest 'files' must be a list")
        files = []
        for number, item in enumerate(files_raw):
            if not (isinstance(item, list) and len(item) == width):
                raise ManifestError(f"manifest file #{number} must be {shape}")
            files.append(FileEntry(*item))
        qkd = raw["qkd"]
        if not isinstance(qkd, list):
            raise ManifestError("manifest 'qkd' must be a list of key_IDs")
        manifest = cls(
            transfer_id=raw["id"],
            chunk_size=raw["chunk"],
            files=tuple(files),
            qkd_key_ids=tuple(qkd),
            suite=raw["suite"],
            version=version,
        )
        if manifest.encode() != bytes(data):
            raise ManifestError("manifest is not in canonical CBOR encoding")
        return manifest


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _validate(manifest: Manifest) -> None:
    if manifest.version not in (MANIFEST_VERSION, LEGACY_MANIFEST_VERSION):
        raise ManifestError(f"unsupported manifest version {manifest.version!r}")
    legacy = manifest.version == LEGACY_MANIFEST_VERSION
    if manifest.suite != SUITE:
        raise ManifestError(f"unknown cipher suite {manifest.suite!r} (supported: {SUITE})")
    tid = manifest.transfer_id
    if not isinstance(tid, bytes) or len(tid) != TRANSFER_ID_BYTES:
        raise ManifestError(f"transfer ID must be {TRANSFER_ID_BYTES} bytes")
    size = manifest.chunk_size
    if not _is_uint(size) or not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
        raise ManifestError(f"chunk size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
    if not 1 <= len(manifest.files) <= MAX_FILES:
        raise ManifestError(f"a transfer carries 1..{MAX_FILES} files, got {len(manifest.files)}")
    if len(manifest.qkd_key_ids) > MAX_QKD_KEY_IDS or not all(
        isinstance(k, str) and 0 < len(k) <= MAX_KEY_ID_CHARS for k in manifest.qkd_key_ids
    ):
        raise ManifestError("QKD key_IDs must be at most 64 non-empty strings of <= 128 chars")
    seen: set[str] = set()
    for number, entry in enumerate(manifest.files):
        if not isinstance(entry.path, str) or not 0 < len(entry.path) <= MAX_PATH_CHARS:
            raise ManifestError(f"file #{number}: path must be 1..{MAX_PATH_CHARS} characters")
        if entry.path in seen:
            raise ManifestError(f"file #{number}: path {entry.path!r} appears twice")
        seen.add(entry.path)
        if not _is_uint(entry.size):
            raise ManifestError(f"file #{number}: size must be a non-negative integer")
        if entry.chunk_count(size) > MAX_CHUNKS_PER_FILE:
            raise ManifestError(f"file #{number}: too large for {size}-byte chunks")
        if legacy and (not isinstance(entry.sha256, bytes) or len(entry.sha256) != SHA256_BYTES):
            raise ManifestError(f"file #{number}: sha256 must be {SHA256_BYTES} bytes")
        if not legacy and entry.sha256 is not None:
            raise ManifestError(f"file #{number}: a version-{manifest.version} manifest lists "
                                "no SHA-256 (it travels in the file's final record)")


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class Skipped:
    """A path inside a folder that is not sent, and why (shown to the sender)."""

    path: str
    reason: str


@dataclass(frozen=True)
class BuiltManifest:
    """A manifest plus, for the sender only, where each file's bytes come from."""

    manifest: Manifest
    sources: tuple[Path, ...]
    skipped: tuple[Skipped, ...] = field(default=())
    # (size, mtime_ns) of each source when it was listed, to notice later changes.
    stamps: tuple[tuple[int, int], ...] = field(default=())


def _stamp(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of a regular file, following a symlink the walk allowed."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SourceError(f"{path}: not a regular file (special files are not sent)")
    return info.st_size, info.st_mtime_ns


def _walk(root: Path, top: str) -> tuple[list[tuple[str, Path]], list[Skipped]]:
    """Regular files under ``root`` (sorted), named ``top/rel/path``; what was skipped."""
    real_root = os.path.realpath(root)
    found: list[tuple[str, Path]] = []
    skipped: list[Skipped] = []
    stack = [(root, top)]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append(Skipped(prefix, f"cannot list folder: {exc.strerror}"))
            continue
        subfolders = []
        for entry in entries:
            name = f"{prefix}/{entry.name}"
            path = Path(entry.path)
            if entry.is_symlink():
                target = os.path.realpath(path)
                inside = target.startswith(real_root.rstrip(os.sep) + os.sep)
                if not inside:
                    skipped.append(Skipped(name, "symlink points outside the folder"))
                elif os.path.isdir(target):
                    skipped.append(Skipped(name, "symlink to a folder is not followed"))
                elif os.path.isfile(target):
                    found.append((name, path))
                else:
                    skipped.append(Skipped(name, "broken symlink or special file"))
                continue
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                subfolders.append((path, name))
            elif stat.S_ISREG(mode):
                found.append((name, path))
            else:
                skipped.append(Skipped(name, "special file (device, FIFO or socket)"))
        stack.extend(reversed(subfolders))
    found.sort(key=lambda item: item[0])
    return found, skipped


def build_manifest(
    paths: Iterable[str | os.PathLike[str]],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    transfer_id: bytes | None = None,
) -> BuiltManifest:
    """Walk files and folders and describe them (names and sizes) in a new manifest.

    Nothing is read: each file is hashed while it is sent (see the module docstring). Its
    size and modification time are recorded here, so the sender refuses a file that changes
    after it was offered.

    Folders keep their relative structure under their own name. Inside a folder, symlinks
    that leave it, symlinks to folders and special files are skipped and reported. A path
    named explicitly is followed even if it is a symlink (the user asked for it).
    """
    named: list[tuple[str, Path]] = []
    skipped: list[Skipped] = []
    used_tops: set[str] = set()
    for raw in paths:
        path = Path(raw)
        if not os.path.lexists(path):
            raise SourceError(f"{path}: no such file or folder")
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise SourceError(f"{path}: {exc.strerror}") from None
        top = Path(os.path.abspath(path)).name or Path(os.path.realpath(path)).name
        if not top:
            raise SourceError(f"{path}: cannot send the root of a filesystem")
        base, attempt = top, 0
        while top in used_tops:
            attempt += 1
            top = numbered(base, attempt)
        used_tops.add(top)
        if stat.S_ISREG(mode):
            named.append((top, path))
        elif stat.S_ISDIR(mode):
            files, skips = _walk(path, top)
            named.extend(files)
            skipped.extend(skips)
        else:
            raise SourceError(f"{path}: not a regular file or folder (special files are not sent)")
    if not named:
        raise SourceError("nothing to send: no regular files found")
    entries = []
    stamps = []
    for name, path in named:
        size, mtime_ns = _stamp(path)
        entries.append(FileEntry(path=name, size=size))
        stamps.append((size, mtime_ns))
    manifest = Manifest(
        transfer_id=transfer_id if transfer_id is not None else secrets.token_bytes(16),
        chunk_size=chunk_size,
        files=tuple(entries),
    )
    return BuiltManifest(manifest, tuple(path for _, path in named), tuple(skipped),
                         tuple(stamps))
