"""relay.wire without sockets: round trips, refusals, byte layouts, the client state machine."""

from __future__ import annotations

import json
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keysource.pq import hybrid_signature
from relay import wire

HYBRID = hybrid_signature()
MSG = "ab" * 16


def test_hybrid_sizes_match_keysource() -> None:
    assert wire.HYBRID_PUBLIC_KEY_BYTES == HYBRID.public_key_size
    assert wire.HYBRID_SIGNATURE_BYTES == HYBRID.signature_size


def _server_round_trip(frame: wire.Frame) -> wire.Frame:
    return wire.parse_server_frame(frame.encode())


def test_every_frame_round_trips() -> None:
    bundle = wire.PrekeyBundle(b"i" * wire.HYBRID_PUBLIC_KEY_BYTES, b"signed",
                               b"s" * wire.HYBRID_SIGNATURE_BYTES,
                               (wire.OneTimePrekey(5, b"k", b"s" * wire.HYBRID_SIGNATURE_BYTES),))
    client_frames = [
        wire.Auth("alice", b"i" * wire.HYBRID_PUBLIC_KEY_BYTES, "qsr-1",
                  b"s" * wire.HYBRID_SIGNATURE_BYTES),
        wire.Send(MSG, "bob", b"sealed", "r1"), wire.Send(MSG, "bob", b"x"),
        wire.Ack((1, 2, 3)), wire.PrekeysUpload(bundle, "u"), wire.PrekeysFetch("bob"),
        wire.StreamOpen("00" * 16, "bob", "media"), wire.StreamClose("11" * 16), wire.Ping("p"),
    ]
    for frame in client_frames:
        assert wire.parse_client_frame(frame.encode()) == frame
    server_frames = [
        wire.Hello("qsr-1", b"n" * 32, (1,), {"rate": 5}), wire.AuthOk("alice", True, 3, 0),
        wire.Error("bad_json", "no", "r", MSG), wire.Error("internal", "x"),
        wire.Stored(MSG, False), wire.Stored(MSG, True, "r9"), wire.StoredMany((MSG, "cd" * 16)),
        wire.Deliver(7, MSG, "alice", b"sealed", 1234), wire.PrekeysOk(3, "u"),
        wire.Bundle("bob", bundle, 0, "f"), wire.PrekeysLow(2), wire.StreamOk("00" * 16),
        wire.StreamIncoming("00" * 16, "alice", "file"), wire.Pong(),
    ]
    for frame in server_frames:
        assert _server_round_trip(frame) == frame


def test_hot_path_encoders_equal_the_generic_encoding() -> None:
    for frame in (wire.Stored(MSG, False), wire.Stored(MSG, True, "r.1:x-y_z"),
                  wire.StoredMany((MSG,)), wire.StoredMany(tuple(f"{i:032x}" for i in range(9))),
                  wire.Deliver(2**40, MSG, "a.b_c-d", os.urandom(300), 1_700_000_000_000)):
        generic = json.dumps(wire.Frame.to_json(frame), separators=(",", ":"))
        assert json.loads(frame.encode()) == json.loads(generic)


def test_direction_matters() -> None:
    with pytest.raises(wire.WireError) as info:
        wire.parse_client_frame(wire.Deliver(1, MSG, "a", b"x", 1).encode())
    assert info.value.code == "unknown_type"
    with pytest.raises(wire.WireError):
        wire.parse_server_frame(wire.Send(MSG, "bob", b"x").encode())


@pytest.mark.parametrize("text, code", [
    ("", "bad_json"), ("{", "bad_json"), ("null", "bad_json"), ("[]", "bad_json"),
    ('{"v":1}', "unknown_type"), ('{"t":"ping"}', "bad_version"),
    ('{"v":1.0,"t":"ping"}', "bad_version"), ('{"v":1,"t":"ping","x":1}', "bad_field"),
    ('{"v":1,"t":"ping","id":""}', "bad_field"), ('{"v":1,"t":"ping","id":"a b"}', "bad_field"),
    ('{"v":1,"t":"ack","seqs":[]}', "bad_field"),
    ('{"v":1,"t":"ack","seqs":[9007199254740992]}', "bad_field"),
    ('{"v":1,"t":"send","msg":"' + MSG + '","to":"bob","body":"AA="}', "bad_field"),
    ('{"v":1,"t":"send","msg":"' + MSG.upper() + '","to":"bob","body":"AA=="}', "bad_field"),
    ('{"v":1,"t":"send","msg":"' + MSG + '","to":"-bob","body":"AA=="}', "bad_field"),
    ('{"v":1,"t":"send","msg":"' + MSG + '","to":"' + "b" * 33 + '","body":"AA=="}',
     "bad_field"),
    ('{"v":1,"t":"stream_open","stream":"00","to":"bob","kind":"file"}', "bad_field"),
])
def test_refusals(text: str, code: str) -> None:
    with pytest.raises(wire.WireError) as info:
        wire.parse_client_frame(text)
    assert info.value.code == code and code in wire.ERROR_CODES


def test_oversized_body_is_refused_before_decoding() -> None:
    huge = "A" * (4 * (wire.MAX_ENVELOPE_BYTES // 3 + 2))
    with pytest.raises(wire.WireError) as info:
        wire.parse_client_frame(json.dumps({"v": 1, "t": "send", "msg": MSG, "to": "b",
                                            "body": huge}))
    assert info.value.code == "too_large"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                              lambda c: st.lists(c, max_size=4)
                              | st.dictionaries(st.text(max_size=5), c, max_size=4),
                              max_leaves=20).map(json.dumps)))
def test_parsers_only_ever_raise_wire_error(data: str | bytes) -> None:
    for parse in (wire.parse_client_frame, wire.parse_server_frame):
        try:
            parse(data)
        except wire.WireError as exc:
            assert exc.code in wire.ERROR_CODES


def test_binary_header_layout_and_refusals() -> None:
    stream = bytes(range(16))
    frame = wire.encode_binary(wire.KIND_MEDIA, stream, 2**40 + 5, b"opus", flags=wire.FLAG_FINAL)
    assert frame[:32] == struct.pack(">BBH16sQI", 1, 2, 1, stream, 2**40 + 5, 4)
    parsed = wire.parse_binary(frame)
    assert (parsed.kind, parsed.final, parsed.stream, parsed.seq, parsed.payload) == (
        wire.KIND_MEDIA, True, stream, 2**40 + 5, b"opus")
    bad = [frame[:31], frame[:-1], b"\x02" + frame[1:], frame[:1] + b"\x09" + frame[2:],
           frame[:2] + b"\x80\x00" + frame[4:]]
    for data in bad:
        with pytest.raises(wire.WireError) as info:
            wire.parse_binary(data)
        assert info.value.code == "bad_binary_frame"
    with pytest.raises(wire.WireError):
        wire.encode_binary(wire.KIND_FILE_CHUNK, stream, 0, b"x" * (wire.MAX_BINARY_PAYLOAD + 1))


def test_binary_frames_built_in_place_and_parsed_without_copies() -> None:
    """The bulk path: the header goes into headroom before the payload; parsing keeps a view."""
    stream = bytes(range(16))
    payload = bytes(range(256)) * 8
    frame = bytearray(wire.HEADER_BYTES) + payload
    wire.encode_binary_into(frame, wire.KIND_FILE_CHUNK, stream, 7)
    assert bytes(frame) == wire.encode_binary(wire.KIND_FILE_CHUNK, stream, 7, payload)
    parsed = wire.parse_binary(frame)
    assert isinstance(parsed.payload, memoryview) and parsed.payload.obj is frame
    assert parsed.payload == payload and parsed.seq == 7
    with pytest.raises(wire.WireError):
        wire.encode_binary_into(bytearray(31), wire.KIND_FILE_CHUNK, stream, 0)
    with pytest.raises(wire.WireError):
        wire.encode_binary_into(bytearray(wire.HEADER_BYTES + 1), 9, stream, 0)
    too_big = bytearray(wire.HEADER_BYTES + wire.MAX_BINARY_PAYLOAD + 1)
    with pytest.raises(wire.WireError) as info:
        wire.encode_binary_into(too_big, wire.KIND_FILE_CHUNK, stream, 0)
    assert info.value.code == "too_large"


def test_auth_message_layout_is_fixed() -> None:
    """Golden bytes: the relay and every client must build exactly this."""
    message = wire.auth_message(b"N" * 32, "qsr-1", b"F" * 32, "alice", b"K" * 3)
    expected = (b"qsecret/v1/relay-auth\x00" + b"\x00\x00\x00\x20" + b"N" * 32
                + b"\x00\x00\x00\x05qsr-1" + b"\x00\x00\x00\x20" + b"F" * 32
                + b"\x00\x00\x00\x05alice" + b"\x00\x00\x00\x03KKK")
    assert message == expected
    assert wire.auth_message(b"N" * 32, "qsr-1", b"", "alice", b"K") != wire.auth_message(
        b"N" * 32, "qsr-1", b"", "alicE", b"K")


def test_prekey_signatures_cover_handle_and_key() -> None:
    keys = HYBRID.generate_keypair()
    sign = lambda m: HYBRID.sign(keys.secret_key, m)  # noqa: E731
    bundle = wire.sign_bundle("bob", keys.public_key, b"spk", [(1, b"a"), (2, b"b")], sign)
    wire.verify_bundle("bob", bundle, HYBRID.verify)
    from keysource.pq import InvalidSignature

    with pytest.raises(InvalidSignature):
        wire.verify_bundle("mallory", bundle, HYBRID.verify)  # republished under another name
    swapped = wire.PrekeyBundle(bundle.identity, bundle.signed, bundle.signed_sig,
                                (wire.OneTimePrekey(2, b"a", bundle.one_time[0].sig),))
    with pytest.raises(InvalidSignature):
        wire.verify_bundle("bob", swapped, HYBRID.verify)


def test_fingerprint_formats() -> None:
    fp = wire.certificate_fingerprint(b"cert")
    text = wire.format_fingerprint(fp)
    assert len(text) == 95 and wire.parse_fingerprint(text) == fp
    assert wire.parse_fingerprint("sha256:" + fp.hex().upper()) == fp
    with pytest.raises(ValueError):
        wire.parse_fingerprint("abcd")


def test_client_state_machine_login_hold_and_resend() -> None:
    keys = HYBRID.generate_keypair()
    conn = wire.ClientConnection("alice", keys.public_key,
                                 lambda m: HYBRID.sign(keys.secret_key, m))
    msg = conn.send("bob", b"early")  # before login: held
    assert conn.data_to_send() == [] and msg in conn.unconfirmed
    nonce = os.urandom(32)
    conn.receive(wire.Hello("qsr-9", nonce, (1,), {}).encode())
    (auth_text,) = conn.data_to_send()
    auth = wire.parse_client_frame(auth_text)
    assert isinstance(auth, wire.Auth) and auth.relay == "qsr-9"
    HYBRID.verify(keys.public_key,
                  wire.auth_message(nonce, "qsr-9", b"", "alice", keys.public_key), auth.sig)
    conn.receive(wire.AuthOk("alice", True, 0, 0).encode())
    (send_text,) = conn.data_to_send()
    assert wire.parse_client_frame(send_text) == conn.unconfirmed[msg]
    # Not confirmed before the connection drops: the next connection resends it.
    again = wire.ClientConnection("alice", keys.public_key,
                                  lambda m: HYBRID.sign(keys.secret_key, m),
                                  resend=conn.unconfirmed.values())
    again.receive(wire.Hello("qsr-9", os.urandom(32), (1,), {}).encode())
    again.data_to_send()
    again.receive(wire.AuthOk("alice", False, 0, 0).encode())
    assert [wire.parse_client_frame(t).msg for t in again.data_to_send()] == [msg]
    again.receive(wire.Stored(msg, False).encode())
    assert not again.unconfirmed
    events = again.receive(wire.encode_binary(1, bytes(16), 0, b"x"))
    assert isinstance(events[0], wire.BinaryFrame)


@pytest.mark.parametrize("msgs", [[], ["AB" * 16], [MSG, 7], MSG, ["ab"],
                                  [MSG] * (wire.MAX_STORED_MSGS + 1)])
def test_stored_many_refuses_bad_lists(msgs: object) -> None:
    text = json.dumps({"v": 1, "t": "stored_many", "msgs": msgs})
    with pytest.raises(wire.WireError) as info:
        wire.parse_server_frame(text)
    assert info.value.code == "bad_field"


def test_stored_many_confirms_every_message_it_names() -> None:
    keys = HYBRID.generate_keypair()
    conn = wire.ClientConnection("alice", keys.public_key,
                                 lambda m: HYBRID.sign(keys.secret_key, m))
    conn.receive(wire.Hello("qsr-9", os.urandom(32), (1,), {}).encode())
    conn.receive(wire.AuthOk("alice", True, 0, 0).encode())
    sent = [conn.send("bob", b"sealed") for _ in range(5)]
    events = conn.receive(wire.StoredMany(tuple(sent[:3])).encode())
    # One plain Stored event per message, so consumers need no second code path.
    assert events == [wire.Stored(msg, False) for msg in sent[:3]]
    assert sorted(conn.unconfirmed) == sorted(sent[3:])


_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


@settings(max_examples=300, deadline=None)
@given(msg=st.text("0123456789abcdefABx", min_size=30, max_size=33),
       to=st.text("abz09._-A", min_size=0, max_size=34),
       body=st.text(_B64_CHARS, max_size=24),
       req_id=st.none() | st.text("az09._:-", min_size=0, max_size=66))
def test_fast_send_parser_agrees_with_the_generic_one(msg: str, to: str, body: str,
                                                      req_id: str | None) -> None:
    from relay.wire.frames import CLIENT_FRAMES, _parse

    text = f'{{"v":1,"t":"send","msg":"{msg}","to":"{to}","body":"{body}"'
    text += "}" if req_id is None else f',"id":"{req_id}"}}'
    try:
        expected: object = _parse(text, CLIENT_FRAMES)
    except wire.WireError as exc:
        expected = exc.code
    try:
        got: object = wire.parse_client_frame(text)
    except wire.WireError as exc:
        got = exc.code
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(seqs=st.lists(st.text("0123456789", min_size=0, max_size=17), max_size=8),
       spaces=st.booleans())
def test_fast_ack_parser_agrees_with_the_generic_one(seqs: list[str], spaces: bool) -> None:
    from relay.wire.frames import CLIENT_FRAMES, _parse

    text = '{"v":1,"t":"ack","seqs":[' + (", " if spaces else ",").join(seqs) + "]}"
    try:
        expected: object = _parse(text, CLIENT_FRAMES)
    except wire.WireError as exc:
        expected = exc.code
    try:
        got: object = wire.parse_client_frame(text)
    except wire.WireError as exc:
        got = exc.code
    assert got == expected


def test_fast_ack_parser_keeps_the_limits() -> None:
    too_many = '{"v":1,"t":"ack","seqs":[' + ",".join(["1"] * (wire.MAX_ACK_SEQS + 1)) + "]}"
    with pytest.raises(wire.WireError):
        wire.parse_client_frame(too_many)
    with pytest.raises(wire.WireError):
        wire.parse_client_frame('{"v":1,"t":"ack","seqs":[9007199254740992]}')  # 2^53
    assert wire.parse_client_frame('{"v":1,"t":"ack","seqs":[0,7]}') == wire.Ack((0, 7))


def test_client_connection_parses_stream_events() -> None:
    """The stream events and the error's stream id come back parsed (the client writes its
    stream frames with the frame classes and encode_binary_into, as relay_link does)."""
    keys = HYBRID.generate_keypair()
    conn = wire.ClientConnection("alice", keys.public_key,
                                 lambda m: HYBRID.sign(keys.secret_key, m))
    stream = bytes(range(16))
    conn.receive(wire.Hello("qsr-9", os.urandom(32), (1,), {"spool_quota": 4096}).encode())
    conn.data_to_send()
    conn.receive(wire.AuthOk("alice", False, 0, 0).encode())
    frame = bytearray(wire.HEADER_BYTES) + b"chunk"
    wire.encode_binary_into(frame, wire.KIND_FILE_CHUNK, stream, 3)
    (chunk,) = conn.receive(bytes(frame))
    assert isinstance(chunk, wire.BinaryFrame) and (chunk.seq, bytes(chunk.payload)) == (
        3, b"chunk")
    error = wire.Error("quota_exceeded", "bob's spool is full", stream=stream.hex())
    (event,) = conn.receive(error.encode())
    assert isinstance(event, wire.Error) and event.stream == stream.hex()
    assert '"stream":"' + stream.hex() in error.encode()
    assert "stream" not in wire.Error("bad_json", "x").to_json()
    with pytest.raises(wire.WireError):
        conn.receive('{"v":1,"t":"error","code":"x","message":"y","stream":"zz"}')
    for frame in (wire.StreamOk(stream.hex(), "f1"), wire.StreamIncoming(stream.hex(), "bob",
                                                                          "file")):
        assert conn.receive(frame.encode()) == [frame]
