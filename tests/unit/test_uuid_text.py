"""keysource.uuid_text: one spelling for every key_ID, whatever spelling came in."""

from __future__ import annotations

import os
import uuid

import pytest

from keysource.uuid_text import canonical_uuid, uuid_bytes, uuid_texts, version4_uuids


def test_canonical_text_is_kept_and_every_other_spelling_becomes_it() -> None:
    value = uuid.uuid4()
    text = str(value)
    assert canonical_uuid(text) == text
    for spelling in (text.upper(), "{" + text + "}", "urn:uuid:" + text, value.hex,
                     value.hex.upper()):
        assert canonical_uuid(spelling) == text == str(uuid.UUID(spelling))


@pytest.mark.parametrize("bad", ["", "not-a-uuid", str(uuid.UUID(int=7)) + "\n",
                                 str(uuid.UUID(int=7))[:-1], str(uuid.UUID(int=7)) + "0",
                                 " " + str(uuid.UUID(int=7))])
def test_anything_else_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        canonical_uuid(bad)


def test_block_conversions_match_the_uuid_module() -> None:
    raw = os.urandom(16 * 300)
    ids = [uuid.UUID(bytes=raw[i: i + 16]) for i in range(0, len(raw), 16)]
    assert uuid_texts(raw) == [str(u) for u in ids]
    assert uuid_bytes([str(u) for u in ids]) == raw
    assert version4_uuids(raw) == [str(uuid.UUID(bytes=raw[i: i + 16], version=4))
                                   for i in range(0, len(raw), 16)]
    assert all(uuid.UUID(u).version == 4 for u in version4_uuids(raw))
    assert uuid_texts(b"") == [] and uuid_bytes([]) == b""


@pytest.mark.parametrize("spelling", [
    "6BA7B810-9DAD-11D1-80B4-00C04FD430C8", "{6ba7b810-9dad-11d1-80b4-00c04fd430c8}",
    "6ba7b8109-dad-11d1-80b4-00c04fd430c8", "6ba7b810-9dad-11d1-80b4-00c04fd430c ",
    "6ba7b810-9dad-11d1-80b4-00c04fd430", "6ba7b810-9dad-11d1-80b4-00c04fd430zz"])
def test_uuid_bytes_takes_only_canonical_text(spelling: str) -> None:
    with pytest.raises(ValueError, match="canonical"):
        uuid_bytes(["6ba7b810-9dad-11d1-80b4-00c04fd430c8", spelling])


def test_block_conversions_refuse_a_partial_uuid() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        uuid_texts(b"\0" * 17)
    with pytest.raises(ValueError, match="16 bytes"):
        version4_uuids(b"\0" * 15)
