"""The plaintext inside E2EE messages: each kind encodes and decodes to itself; bad ones refused."""

from __future__ import annotations

import cbor2
import pytest

from client.messenger import payload as payloads


@pytest.mark.parametrize("made", [
    payloads.text("hello"),
    payloads.receipt("read", ["a", "b"]),
    payloads.transfer(b"offer", secret=b"s" * payloads.TRANSFER_SECRET_BYTES),
    payloads.transfer(b"cancel"),
    payloads.call(b"offer", secret=b"c" * payloads.CALL_SECRET_BYTES),
    payloads.call(b"hangup"),
])
def test_every_kind_round_trips(made: payloads.Payload) -> None:
    assert payloads.decode(made.encode()) == made


def test_an_unknown_kind_or_version_is_refused() -> None:
    with pytest.raises(payloads.PayloadError, match="kind"):
        payloads.decode(cbor2.dumps({"v": 1, "t": "group", "id": "x", "ts": 0.0}))
    with pytest.raises(payloads.PayloadError, match="version"):
        payloads.decode(cbor2.dumps({"v": 2, "t": "text", "id": "x", "ts": 0.0, "text": ""}))


def test_a_malformed_secret_is_refused() -> None:
    body = cbor2.loads(payloads.transfer(b"offer").encode()) | {"secret": b"short"}
    with pytest.raises(payloads.PayloadError, match="secret"):
        payloads.decode(cbor2.dumps(body))


def test_a_call_payload_without_data_or_with_a_short_secret_is_refused() -> None:
    with pytest.raises(payloads.PayloadError, match="no valid data"):
        payloads.decode(cbor2.dumps({"v": 1, "t": "call", "id": "x", "ts": 0.0}))
    body = cbor2.loads(payloads.call(b"offer").encode()) | {"secret": b"short"}
    with pytest.raises(payloads.PayloadError, match="secret"):
        payloads.decode(cbor2.dumps(body))
