"""A change's signed bytes and ID are computed once: the fold asks every change for its ID
whenever a change arrives, and a create of a big group is ~100 KB of CBOR to encode."""

from __future__ import annotations

import hashlib

import cbor2
import pytest

from client.group import roster
from client.group.roster import Change, GroupLog, Op
from tests.protocol.helpers import identity

GROUP = bytes(range(16))
HANDLES = [f"m{i:02d}" for i in range(50)]


def _create() -> Change:
    return Change.make(identity("m00"), group_id=GROUP, op=Op.CREATE, author="m00",
                       parents=(), name="big",
                       members=[(h, identity(h).public.encode()) for h in HANDLES])


def test_a_decoded_change_keeps_the_bytes_it_came_in() -> None:
    encoded = _create().encode()
    body = cbor2.loads(encoded)["c"]
    change = Change.decode(encoded)
    assert change.body() == body and change.id == hashlib.sha256(body).digest()
    assert change.encode() == encoded


def test_receiving_a_change_does_not_encode_the_group_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    log = GroupLog(Change.decode(_create().encode()))
    remove = Change.make(identity("m00"), group_id=GROUP, op=Op.REMOVE, author="m00",
                         parents=log.heads(), targets=["m49"])
    arriving = Change.decode(remove.encode())
    encodings: list[int] = []
    dumps = cbor2.dumps

    def counting(obj: object, **kwargs: object) -> bytes:
        out = dumps(obj, **kwargs)
        encodings.append(len(out))
        return out

    monkeypatch.setattr(roster.cbor2, "dumps", counting)
    log.receive(arriving)
    assert "m49" not in log.roster.members and len(log.roster.members) == 49
    assert encodings == []  # both changes' bytes were known: nothing encoded again
