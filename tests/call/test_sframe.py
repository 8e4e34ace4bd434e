"""SFrame (RFC 9605) against the RFC's test vectors, and the receiver's refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from client.call.sframe import (
    AES_256_GCM_SHA512_128,
    MAX_VALUE,
    SUITES,
    Receiver,
    Sender,
    SFrameError,
    decode_header,
    derive_frame_key,
    encode_header,
    open_frame,
    seal,
)

VECTORS = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "sframe-rfc9605-vectors.json").read_text())


def test_the_vectors_name_their_source_and_cover_both_gcm_suites() -> None:
    assert "RFC 9605" in VECTORS["source"] and "sframe-wg/sframe" in VECTORS["source"]
    assert {v["cipher_suite"] for v in VECTORS["sframe"]} == set(SUITES) == {4, 5}
    assert len(VECTORS["header"]) > 200


def test_header_encoding_matches_the_rfc() -> None:
    wrong = []
    for case in VECTORS["header"]:
        encoded = bytes.fromhex(case["encoded"])
        if (encode_header(case["kid"], case["ctr"]) != encoded
                or decode_header(encoded + b"payload") != (case["kid"], case["ctr"],
                                                           len(encoded))):
            wrong.append(case)
    assert not wrong, wrong[:3]


@pytest.mark.parametrize("case", VECTORS["sframe"], ids=lambda c: f"suite{c['cipher_suite']}")
def test_encryption_matches_the_rfc(case: dict) -> None:
    suite = SUITES[case["cipher_suite"]]
    key = derive_frame_key(suite, bytes.fromhex(case["base_key"]), case["kid"])
    assert key.key.hex() == case["sframe_key"]
    assert key.salt.hex() == case["sframe_salt"]
    metadata, plaintext = bytes.fromhex(case["metadata"]), bytes.fromhex(case["pt"])
    frame = seal(key, case["ctr"], plaintext, metadata)
    assert frame.hex() == case["ct"]
    header_len = decode_header(frame)[2]
    assert (frame[:header_len] + metadata).hex() == case["aad"]
    assert open_frame(key, frame, metadata) == (case["ctr"], plaintext)


def test_header_values_out_of_range_are_refused() -> None:
    for kid, ctr in ((-1, 0), (0, -1), (MAX_VALUE + 1, 0), (0, MAX_VALUE + 1)):
        with pytest.raises(ValueError):
            encode_header(kid, ctr)


@pytest.mark.parametrize("data", [b"", b"\x08", b"\x80", b"\x9f\x01\x00\x01", b"\xff" * 8])
def test_a_cut_header_is_malformed(data: bytes) -> None:
    with pytest.raises(SFrameError) as refused:
        decode_header(data)
    assert refused.value.reason == "malformed"


def pair(kid: int = 7) -> tuple[Sender, Receiver]:
    base = os.urandom(32)
    receiver = Receiver()
    receiver.add_key(base, kid)
    return Sender(base, kid), receiver


def test_frames_open_in_any_order_once_each() -> None:
    sender, receiver = pair()
    frames = [sender.protect(f"frame {n}".encode(), b"meta") for n in range(10)]
    for n in (3, 0, 9, 1, 2, 8, 4, 7, 5, 6):
        assert receiver.unprotect(frames[n], b"meta") == (7, n, f"frame {n}".encode())
    assert receiver.opened == 10 and not receiver.refused
    for frame in frames:
        with pytest.raises(SFrameError) as refused:
            receiver.unprotect(frame, b"meta")
        assert refused.value.reason == "replayed"
    assert receiver.refused == {"replayed": 10}


def test_every_flipped_bit_is_refused_and_counted() -> None:
    sender, receiver = pair(kid=300)
    frame = sender.protect(b"twenty ms of opus")
    for bit in range(len(frame) * 8):
        tampered = bytearray(frame)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(SFrameError) as refused:
            receiver.unprotect(bytes(tampered))
        assert refused.value.reason in ("auth_failed", "unknown_kid", "malformed")
    assert sum(receiver.refused.values()) == len(frame) * 8
    assert receiver.opened == 0
    assert receiver.unprotect(frame)[2] == b"twenty ms of opus"  # the real one still opens


def test_other_metadata_fails_authentication() -> None:
    sender, receiver = pair()
    with pytest.raises(SFrameError) as refused:
        receiver.unprotect(sender.protect(b"x", b"call 1"), b"call 2")
    assert refused.value.reason == "auth_failed"


def test_a_forged_frame_does_not_move_the_replay_window() -> None:
    sender, receiver = pair()
    first = sender.protect(b"first")
    forged = encode_header(7, 10_000) + os.urandom(40)
    with pytest.raises(SFrameError):
        receiver.unprotect(forged)
    assert receiver.unprotect(first)[1] == 0  # had the forgery moved it, this is too old


def test_frames_older_than_the_window_are_refused() -> None:
    sender, receiver = pair()
    frames = [sender.protect(bytes([n % 256])) for n in range(200)]
    receiver.unprotect(frames[199])
    assert receiver.unprotect(frames[199 - 127])[1] == 72
    with pytest.raises(SFrameError) as refused:
        receiver.unprotect(frames[199 - 128])
    assert refused.value.reason == "too_old"


def test_unknown_and_retired_kids_are_refused() -> None:
    sender, receiver = pair(kid=1)
    stranger = Sender(os.urandom(32), kid=2)
    with pytest.raises(SFrameError) as refused:
        receiver.unprotect(stranger.protect(b"hi"))
    assert refused.value.reason == "unknown_kid"
    frame = sender.protect(b"before the rekey")
    receiver.retire(1)
    with pytest.raises(SFrameError) as refused:
        receiver.unprotect(frame)
    assert refused.value.reason == "unknown_kid"
    assert receiver.kids == ()


def test_a_kid_is_keyed_once_and_a_wrong_base_key_fails() -> None:
    receiver = Receiver()
    receiver.add_key(b"k" * 32, 5)
    with pytest.raises(ValueError):
        receiver.add_key(b"j" * 32, 5)
    with pytest.raises(SFrameError) as refused:
        receiver.unprotect(Sender(b"j" * 32, 5).protect(b"x"))
    assert refused.value.reason == "auth_failed"


def test_calls_use_aes_256_gcm_and_keys_differ_per_kid() -> None:
    sender = Sender(b"b" * 32, 0)
    assert sender.key.suite is AES_256_GCM_SHA512_128 and len(sender.key.key) == 32
    assert derive_frame_key(AES_256_GCM_SHA512_128, b"b" * 32, 1).key != sender.key.key
    assert sender.key.key.hex() not in repr(sender.key)
