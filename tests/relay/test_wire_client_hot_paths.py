"""The client side's hot paths of the wire: ``send`` encoded once and without the generic
encoder, ``deliver`` parsed without the generic parser; both say exactly what the generic
code says, for every input."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import wire
from relay.wire import frames
from relay.wire.frames import SERVER_FRAMES, _parse

MSG = "ab" * 16
_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def _generic_text(frame: wire.Frame) -> str:
    return json.dumps(wire.Frame.to_json(frame), separators=(",", ":"))


@settings(max_examples=300, deadline=None)
@given(msg=st.sampled_from([MSG, "AB" * 16, "ab" * 15, 'ab"' + "c" * 29]),
       to=st.text('abz09._-A"\\\n\u00e9', min_size=0, max_size=34),
       body=st.binary(max_size=40),
       req_id=st.none() | st.text('az09._:-"\\ ', min_size=0, max_size=66))
def test_send_encoding_is_the_generic_encoding(msg: str, to: str, body: bytes,
                                               req_id: str | None) -> None:
    """Valid or not (the relay refuses the invalid), the text is the generic encoder's:
    a handle or request ID needing JSON escapes is escaped, never pasted in."""
    frame = wire.Send(msg, to, body, req_id)
    assert frame.encode() == _generic_text(frame)


def test_a_send_encodes_its_body_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    encode = frames.b64encode

    def counting(data: bytes) -> str:
        calls.append(len(data))
        return encode(data)

    monkeypatch.setattr(frames, "b64encode", counting)
    conn = wire.ClientConnection("alice", b"i" * wire.HYBRID_PUBLIC_KEY_BYTES, lambda m: b"s")
    conn.state = "ready"
    body = os.urandom(2400)  # a ratchet turn message
    msg = conn.send("bob", body)
    (text,) = conn.data_to_send()
    assert calls == [len(body)]
    assert wire.parse_client_frame(text) == wire.Send(msg, "bob", body)


def test_deliver_frames_the_relay_sends_take_the_fast_path() -> None:
    for size in (1, 300, 2400, wire.MAX_ENVELOPE_BYTES):
        frame = wire.Deliver(2**53 - 1, MSG, "a.b_c-d", os.urandom(size), 1_700_000_000_000)
        assert frames._fast_deliver(frame.encode()) == frame
        assert wire.parse_server_frame(frame.encode()) == frame


_NUMBERS = st.sampled_from(["0", "7", "01", "9007199254740991", "9007199254740992", "-1",
                            "1.5", "", "true"])


@settings(max_examples=500, deadline=None)
@given(seq=_NUMBERS, msg=st.sampled_from([MSG, "AB" * 16, "ab" * 17, ""]),
       sender=st.text('abz09._-A"', min_size=0, max_size=34),
       body=st.text(_B64_CHARS + '"\\\n u', max_size=24) | st.sampled_from(
           ["QUJD", "QU\\u004aD", "QUJD\\", 'QU"JD', "QUJ", "QUJD\n", "=QUJD"]),
       ts=_NUMBERS,
       extra=st.sampled_from(["", ',"x":1', ',"ts":5', ',"body":"QUJD"']))
def test_fast_deliver_parser_agrees_with_the_generic_one(seq: str, msg: str, sender: str,
                                                         body: str, ts: str,
                                                         extra: str) -> None:
    text = (f'{{"v":1,"t":"deliver","seq":{seq},"msg":"{msg}","from":"{sender}",'
            f'"body":"{body}","ts":{ts}{extra}}}')
    try:
        expected: object = _parse(text, SERVER_FRAMES)
    except wire.WireError as exc:
        expected = (exc.code, str(exc))
    try:
        got: object = wire.parse_server_frame(text)
    except wire.WireError as exc:
        got = (exc.code, str(exc))
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(seqs=st.lists(st.integers(min_value=-5, max_value=2**64) | st.booleans(), max_size=9))
def test_ack_encoding_is_the_generic_encoding(seqs: list[int]) -> None:
    frame = wire.Ack(tuple(seqs))
    assert frame.encode() == _generic_text(frame)


def test_acks_and_sends_skip_the_generic_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    def generic(_frame: wire.Frame) -> dict[str, object]:
        raise AssertionError("the generic encoder was used")

    monkeypatch.setattr(wire.Frame, "to_json", generic)
    assert wire.Ack((1, 2, 2**53 - 1)).encode() == '{"v":1,"t":"ack","seqs":[1,2,9007199254740991]}'
    assert wire.Send(MSG, "bob", b"x", "r-1").encode() == (
        f'{{"v":1,"t":"send","msg":"{MSG}","to":"bob","body":"eA==","id":"r-1"}}')
