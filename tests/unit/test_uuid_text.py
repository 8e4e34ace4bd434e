"""keysource.uuid_text: one spelling for every key_ID, whatever spelling came in."""

from __future__ import annotations

import uuid

import pytest

from keysource.uuid_text import canonical_uuid


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
