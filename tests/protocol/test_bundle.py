"""Prekey bundles: encoding, every signature checked on parse, the relay's upload format."""

from __future__ import annotations

import pytest

from client.protocol import BadSignature, IdentityMismatch, parse_bundle
from client.protocol.bundle import (
    SignedPart,
    generate_prekeys,
    one_time_message,
    parse_bundle_parts,
    signed_part_message,
)
from client.protocol.errors import MalformedMessage, UnsupportedVersion
from tests.conftest import require_liboqs

from .helpers import identity, make_bob


def test_bundle_round_trips_with_every_field() -> None:
    bob = make_bob(one_time=3)
    parsed = parse_bundle(bob.bundle.encode(), expected_handle="bob",
                          expected_identity=bob.identity.public)
    assert parsed == bob.bundle
    assert parsed.sae_id == "SAE_B" and parsed.kme_hint == "127.0.0.1:0"
    assert [o.key_id for o in parsed.one_time] == [1, 2, 3]
    assert set(bob.secrets.one_time) == {1, 2, 3}
    assert SignedPart.decode(parsed.signed) == parsed.part


def test_a_flipped_bit_in_any_signature_is_rejected() -> None:
    bob = make_bob(one_time=1)
    b = bob.bundle
    otk = b.one_time[0]
    for where in (0, 70, len(b.signed_signature) - 1):  # Ed25519 half and ML-DSA half
        sig = bytearray(b.signed_signature)
        sig[where] ^= 1
        with pytest.raises(BadSignature, match="signed part"):
            parse_bundle_parts("bob", b.identity.signing_key, b.signed, bytes(sig),
                               [(otk.key_id, otk.public, otk.signature)])
        sig = bytearray(otk.signature)
        sig[where] ^= 1
        with pytest.raises(BadSignature, match="one-time prekey 1"):
            parse_bundle_parts("bob", b.identity.signing_key, b.signed, b.signed_signature,
                               [(otk.key_id, otk.public, bytes(sig))])


def test_a_changed_prekey_or_sae_id_breaks_the_signature() -> None:
    b = make_bob(one_time=1).bundle
    forged = SignedPart(b.part.dh_identity, "SAE_EVE", b.part.kme_hint, b.part.x25519_prekey,
                        b.part.pq_prekey).encode()
    with pytest.raises(BadSignature):
        parse_bundle_parts("bob", b.identity.signing_key, forged, b.signed_signature, [])
    otk = b.one_time[0]
    with pytest.raises(BadSignature):  # a one-time prekey renumbered
        parse_bundle_parts("bob", b.identity.signing_key, b.signed, b.signed_signature,
                           [(otk.key_id + 1, otk.public, otk.signature)])


def test_bundle_republished_under_another_handle_is_rejected() -> None:
    b = make_bob().bundle
    with pytest.raises(BadSignature):
        parse_bundle_parts("mallory", b.identity.signing_key, b.signed, b.signed_signature, [])
    with pytest.raises(IdentityMismatch):
        parse_bundle(b.encode(), expected_handle="carol")


def test_swapped_identity_is_rejected_even_when_self_consistent() -> None:
    mallory = identity("mallory")
    forged, _ = generate_prekeys(mallory, "bob", sae_id="SAE_B")  # validly signed by mallory
    with pytest.raises(IdentityMismatch, match="pinned"):
        parse_bundle(forged.encode(), expected_identity=identity("bob").public)


def test_malformed_bundles_get_clear_errors() -> None:
    data = make_bob(one_time=1).bundle.encode()
    with pytest.raises(UnsupportedVersion):
        parse_bundle(b"QSPB\x02" + data[5:])
    with pytest.raises(MalformedMessage, match="truncated"):
        parse_bundle(data[:-10])
    with pytest.raises(MalformedMessage, match="trailing"):
        parse_bundle(data + b"\x00")


def test_signed_encodings_match_the_relay_wire_definitions() -> None:
    """The relay verifies uploads with relay.wire.prekeys: same bytes, and it accepts ours."""
    wire_prekeys = pytest.importorskip("relay.wire.prekeys")
    bob = make_bob(one_time=2)
    b = bob.bundle
    assert signed_part_message("bob", b.identity.signing_key, b.signed) == (
        wire_prekeys.signed_part_message("bob", b.identity.signing_key, b.signed))
    otk = b.one_time[0]
    assert one_time_message("bob", b.identity.signing_key, otk.key_id, otk.public) == (
        wire_prekeys.one_time_message("bob", b.identity.signing_key, otk.key_id, otk.public))
    frame = b.to_relay()
    from keysource import pq

    wire_prekeys.verify_bundle("bob", frame, pq.hybrid_signature().verify)
    back = parse_bundle_parts("bob", frame.identity, frame.signed, frame.signed_sig,
                              [(o.key_id, o.key, o.sig) for o in frame.one_time])
    assert back == b


def test_conservative_liboqs_prekey_is_signed_and_parsed() -> None:
    require_liboqs()
    from client.protocol.bundle import conservative_kem_available

    alg = conservative_kem_available()
    assert alg is not None
    bundle, secrets = generate_prekeys(identity("bob"), "bob", sae_id="SAE_B", conservative=alg)
    parsed = parse_bundle(bundle.encode())
    assert parsed.part.conservative_prekey is not None
    assert parsed.part.conservative_prekey.alg == alg and secrets.conservative
