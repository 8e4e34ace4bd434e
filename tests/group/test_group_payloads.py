"""The two pairwise payload kinds groups add: they round-trip, and malformed ones are refused
with a reason; a sender key never enters the history, a change does."""

from __future__ import annotations

import cbor2
import pytest

from client.messenger import payload
from client.messenger.groups import GROUP_ENVELOPE, is_group_envelope
from client.messenger.history import kept_in_history
from client.protocol.ratchet import VERSION as RATCHET_VERSION

GROUP = bytes(range(16))


def test_group_payloads_round_trip() -> None:
    changes = payload.group_changes(GROUP, [b"one", b"two"])
    assert payload.decode(changes.encode()) == changes
    key = payload.sender_key(b"record")
    assert payload.decode(key.encode()) == key
    assert kept_in_history(changes.encode()) and not kept_in_history(key.encode())


@pytest.mark.parametrize("body, reason", [
    ({"group": b"short", "changes": [b"x"]}, "group ID"),
    ({"group": GROUP, "changes": []}, "changes"),
    ({"group": GROUP, "changes": ["text"]}, "changes"),
    ({"group": GROUP, "changes": [b"x" * (payload.MAX_GROUP_CHANGES_BYTES + 1)]}, "changes"),
])
def test_malformed_group_changes_are_refused(body: dict[str, object], reason: str) -> None:
    data = cbor2.dumps({"v": 1, "t": "group_changes", "id": "i", "ts": 1, **body})
    with pytest.raises(payload.PayloadError, match=reason):
        payload.decode(data)


def test_malformed_sender_keys_are_refused_and_limits_hold_when_made() -> None:
    for blob in ("text", b"x" * (payload.MAX_SENDER_KEY_BYTES + 1)):
        data = cbor2.dumps({"v": 1, "t": "sender_key", "id": "i", "ts": 1, "data": blob})
        with pytest.raises(payload.PayloadError, match="sender key"):
            payload.decode(data)
    with pytest.raises(payload.PayloadError):
        payload.group_changes(GROUP, [b"x" * (payload.MAX_GROUP_CHANGES_BYTES + 1)])
    with pytest.raises(payload.PayloadError):
        payload.sender_key(b"x" * (payload.MAX_SENDER_KEY_BYTES + 1))


def test_a_group_envelope_is_never_taken_for_a_session_message() -> None:
    assert GROUP_ENVELOPE != RATCHET_VERSION
    assert is_group_envelope(bytes([GROUP_ENVELOPE, 1]))
    assert not is_group_envelope(bytes([RATCHET_VERSION, 1])) and not is_group_envelope(b"")
