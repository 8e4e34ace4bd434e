"""QKD key material as the protocol sees it: key_IDs plus key bytes, passed in by the caller.

The protocol core never talks to a KME. The I/O layer fetches keys with the
ETSI GS QKD 014 SAE client (``enc_keys`` on the sending side, ``dec_keys`` with
the key_IDs from a header on the receiving side) and hands them in as
:class:`QkdKeys`, or ``None`` when the KME is unreachable.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import MalformedMessage, QkdMissing

MAX_KEYS_PER_MESSAGE = 16
MAX_KEY_ID_BYTES = 64


@dataclass(frozen=True)
class QkdKeys:
    """Keys handed out by a KME, in the order of ``key_ids``."""

    key_ids: tuple[str, ...]
    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.key_ids) != len(self.keys):
            raise ValueError("QkdKeys needs exactly one key per key_ID")
        if not self.key_ids:
            raise ValueError("QkdKeys needs at least one key (pass None when there is none)")
        if len(self.key_ids) > MAX_KEYS_PER_MESSAGE:
            raise ValueError(f"at most {MAX_KEYS_PER_MESSAGE} QKD keys per message")
        for key_id, key in zip(self.key_ids, self.keys, strict=True):
            if not key_id or len(key_id.encode()) > MAX_KEY_ID_BYTES:
                raise ValueError(f"QKD key_ID must be 1..{MAX_KEY_ID_BYTES} bytes")
            if len(key) < 16:
                raise ValueError(f"QKD key {key_id} is {len(key)} bytes; at least 16 are needed")

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, bytes]]) -> QkdKeys:
        return cls(tuple(k for k, _ in pairs), tuple(v for _, v in pairs))

    @property
    def material(self) -> bytes:
        """All key bytes concatenated, in key_ID order: the combiner's QKD input."""
        return b"".join(self.keys)

    def select(self, key_ids: tuple[str, ...]) -> QkdKeys:
        """The keys for ``key_ids`` in that order; QkdMissing names any not supplied."""
        table = dict(zip(self.key_ids, self.keys, strict=True))
        missing = [k for k in key_ids if k not in table]
        if missing:
            raise QkdMissing(f"QKD key(s) not supplied: {', '.join(missing)}")
        return QkdKeys(key_ids, tuple(table[k] for k in key_ids))

    def __repr__(self) -> str:  # never print key material
        return f"QkdKeys(key_ids={self.key_ids!r})"


def encode_key_ids(key_ids: tuple[str, ...]) -> bytes:
    """u8 count then each key_ID as UTF-8 with a 1-byte length."""
    if len(key_ids) > MAX_KEYS_PER_MESSAGE:
        raise ValueError(f"at most {MAX_KEYS_PER_MESSAGE} QKD key_IDs")
    out = bytearray([len(key_ids)])
    for key_id in key_ids:
        data = key_id.encode("utf-8")
        out.append(len(data))
        out += data
    return bytes(out)


def decode_key_ids(reader_bytes: bytes, offset: int) -> tuple[tuple[str, ...], int]:
    """Parse :func:`encode_key_ids` output at ``offset``; return ids and the new offset."""
    try:
        count = reader_bytes[offset]
        offset += 1
        if count > MAX_KEYS_PER_MESSAGE:
            raise MalformedMessage(f"header lists {count} QKD key_IDs (max {MAX_KEYS_PER_MESSAGE})")
        ids = []
        for _ in range(count):
            size = reader_bytes[offset]
            offset += 1
            raw = reader_bytes[offset : offset + size]
            if len(raw) != size or size == 0:
                raise MalformedMessage("header has a truncated or empty QKD key_ID")
            ids.append(raw.decode("utf-8"))
            offset += size
    except IndexError:
        raise MalformedMessage("header is truncated inside the QKD key_ID list") from None
    except UnicodeDecodeError:
        raise MalformedMessage("header has a QKD key_ID that is not UTF-8") from None
    return tuple(ids), offset
