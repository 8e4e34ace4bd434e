"""The handshake: agreement, every rejection case, QKD policy and recorded sources."""

from __future__ import annotations

import pytest

from client.protocol import (
    BadSignature,
    DecryptionFailed,
    IdentityMismatch,
    MalformedMessage,
    PrekeyUnavailable,
    QkdMissing,
    QkdPolicy,
    QkdRequired,
    RatchetConfig,
    Session,
    WrongRecipient,
    parse_bundle,
)
from client.protocol.handshake import InitialMessage, initiate, respond
from client.protocol.ratchet import parse_header
from tests.conftest import require_liboqs

from .helpers import KeyLink, identity, make_bob


def _start(bob, link, *, one_time=True, qkd=True, policy=QkdPolicy.PREFER):
    bundle = bob.bundle.with_one_time(1 if one_time else 0)
    fetched = parse_bundle(bundle.encode())
    return initiate(identity("alice"), "alice", "SAE_A", fetched,
                    link.enc_keys(1) if qkd else None, policy=policy)


def test_both_sides_derive_the_same_keys_from_all_three_sources() -> None:
    link, bob = KeyLink(), make_bob()
    initial, alice_keys = _start(bob, link)
    decoded = InitialMessage.decode(initial.encode())
    assert decoded == initial
    bob_keys = respond(bob.identity, "bob", "SAE_B", bob.bundle, bob.secrets, decoded,
                       link.dec_keys(decoded.qkd_key_ids))
    assert (bob_keys.root_initiator, bob_keys.chain_initiator, bob_keys.root_responder) == (
        alice_keys.root_initiator, alice_keys.chain_initiator, alice_keys.root_responder)
    assert bob_keys.session_id == alice_keys.session_id
    assert alice_keys.label == "QKD+ML-KEM-768+X25519"
    assert 1 not in bob.secrets.one_time  # the one-time prekey is gone after use


def test_last_resort_prekey_is_used_when_no_one_time_prekey_is_left() -> None:
    link, bob = KeyLink(), make_bob()
    initial, alice_keys = _start(bob, link, one_time=False)
    keys = respond(bob.identity, "bob", "SAE_B", bob.bundle, bob.secrets, initial,
                   link.dec_keys(initial.qkd_key_ids))
    assert keys.root_initiator == alice_keys.root_initiator
    assert len(bob.secrets.one_time) == 2


def test_forged_initiator_signature_is_rejected() -> None:
    link, bob = KeyLink(), make_bob()
    initial, _ = _start(bob, link)
    sig = bytearray(initial.signature)
    sig[-5] ^= 0x40  # the ML-DSA half
    forged = InitialMessage(**{**initial.__dict__, "signature": bytes(sig)})
    with pytest.raises(BadSignature, match="ML-DSA-65"):
        respond(bob.identity, "bob", "SAE_B", bob.bundle, bob.secrets, forged,
                link.dec_keys(initial.qkd_key_ids))
    assert 1 in bob.secrets.one_time  # nothing consumed on failure


def test_swapped_initiator_identity_is_rejected() -> None:
    link, bob = KeyLink(), make_bob()
    initial, _ = _start(bob, link)
    mallory = identity("mallory").public
    swapped = InitialMessage(**{**initial.__dict__, "initiator_identity": mallory})
    with pytest.raises(BadSignature):
        respond(bob.identity, "bob", "SAE_B", bob.bundle, bob.secrets, swapped,
                link.dec_keys(initial.qkd_key_ids))
    with pytest.raises(IdentityMismatch, match="pinned"):
        respond(bob.identity, "bob", "SAE_B", bob.bundle, bob.secrets, initial, None,
                expected_initiator=identity("carol").public)


def test_tampered_kem_ciphertext_or_qkd_key_id_breaks_the_signature() -> None:
    link, bob = KeyLink(), make_bob()
    initial, _ = _start(bob, link)
    ct = bytearray(initial.kem_ciphertext)
    ct[0] ^= 1
    for field, value in (("kem_ciphertext", bytes(ct)), ("qkd_key_ids", ("other-id",))):
        tampered = InitialMessage(**{**initial.__dict__, field: value})
        with pytest.raises(BadSignature):
            respond(bob.identity, "bob", "SAE_B", bob.bundle, bob.secrets, tampered,
                    link.dec_keys(()) or _keys_for(tampered))


def _keys_for(initial):
    from client.protocol import QkdKeys

    return QkdKeys(initial.qkd_key_ids, tuple(b"k" * 32 for _ in initial.qkd_key_ids))


def test_initial_message_replayed_to_another_peer_is_rejected() -> None:
    link, bob = KeyLink(), make_bob()
    carol = make_bob("carol", sae_id="SAE_C")
    initial, _ = _start(bob, link)
    qkd = link.dec_keys(initial.qkd_key_ids)
    with pytest.raises(WrongRecipient, match="addressed to 'bob'"):
        respond(carol.identity, "carol", "SAE_C", carol.bundle, carol.secrets, initial, qkd)
    # carol even re-using bob's handle and bundle fails: the identity and SAE are bound
    with pytest.raises(WrongRecipient, match="identity"):
        respond(carol.identity, "bob", "SAE_C", bob.bundle, carol.secrets, initial, qkd)
    with pytest.raises(WrongRecipient, match="SAE"):
        respond(bob.identity, "bob", "SAE_C", bob.bundle, bob.secrets, initial, qkd)


def test_initial_message_replayed_to_the_same_peer_finds_its_prekey_gone() -> None:
    link, bob = KeyLink(), make_bob()
    initial, _ = _start(bob, link)
    qkd = link.dec_keys(initial.qkd_key_ids)
    respond(bob.identity, "bob", "SAE_B", bob.bundle, bob.secrets, initial, qkd)
    with pytest.raises(PrekeyUnavailable, match="already used"):
        respond(bob.identity, "bob", "SAE_B", bob.bundle, bob.secrets, initial, qkd)


def test_bundle_of_another_generation_is_refused() -> None:
    link, bob = KeyLink(), make_bob()
    initial, _ = _start(bob, link)
    newer = make_bob()
    with pytest.raises(WrongRecipient, match="bundle"):
        respond(bob.identity, "bob", "SAE_B", newer.bundle, bob.secrets, initial, None)


def test_qkd_policy_prefer_degrades_and_require_refuses() -> None:
    link, bob = KeyLink(), make_bob()
    initial, keys = _start(bob, link, qkd=False)
    assert keys.degraded and keys.sources == ("ML-KEM-768", "X25519")
    assert "degraded" in keys.label
    bob_keys = respond(bob.identity, "bob", "SAE_B", bob.bundle, bob.secrets, initial, None)
    assert bob_keys.root_initiator == keys.root_initiator
    with pytest.raises(QkdRequired, match="require"):
        _start(bob, link, qkd=False, policy=QkdPolicy.REQUIRE)
    initial, _ = _start(bob, link, qkd=False, one_time=False)
    with pytest.raises(QkdRequired):
        respond(bob.identity, "bob", "SAE_B", bob.bundle, bob.secrets, initial, None,
                policy=QkdPolicy.REQUIRE)


def test_responder_without_the_named_qkd_keys_gets_a_clear_error() -> None:
    link, bob = KeyLink(), make_bob()
    initial, _ = _start(bob, link)
    with pytest.raises(QkdMissing, match="dec_keys"):
        respond(bob.identity, "bob", "SAE_B", bob.bundle, bob.secrets, initial, None)


def test_wrong_qkd_key_bytes_give_different_keys_and_the_first_message_fails() -> None:
    link, bob = KeyLink(), make_bob()
    fetched = parse_bundle(bob.bundle.with_one_time(1).encode())
    alice = Session.initiate(identity("alice"), "alice", "SAE_A", fetched, link.enc_keys(1))
    wire = alice.encrypt(b"hi").wire
    ids = Session.peek_initial(wire).qkd_key_ids
    with pytest.raises(DecryptionFailed):
        Session.accept(wire, bob.identity, "bob", "SAE_B", bob.bundle, bob.secrets,
                       _keys_for(Session.peek_initial(wire)))
    assert 1 in bob.secrets.one_time  # a failed accept consumes nothing
    session, events = Session.accept(wire, bob.identity, "bob", "SAE_B", bob.bundle,
                                     bob.secrets, link.dec_keys(ids))
    assert events[0].plaintext == b"hi" and 1 not in bob.secrets.one_time


def test_prekey_messages_repeat_the_initial_message_until_the_peer_answers() -> None:
    link, bob = KeyLink(), make_bob()
    fetched = parse_bundle(bob.bundle.with_one_time(1).encode())
    alice = Session.initiate(identity("alice"), "alice", "SAE_A", fetched, link.enc_keys(1))
    first, second = alice.encrypt(b"1").wire, alice.encrypt(b"2").wire
    assert parse_header(second).kind == 3  # prekey message
    ids = Session.peek_initial(second).qkd_key_ids
    # the first message was lost: the second one opens the session on its own
    session, events = Session.accept(second, bob.identity, "bob", "SAE_B", bob.bundle,
                                     bob.secrets, link.dec_keys(ids))
    assert [e.plaintext for e in events] == [b"2"]
    assert [e.plaintext for e in session.decrypt(first)] == [b"1"]
    reply = session.encrypt(b"ack", link.enc_keys(1)).wire
    alice.decrypt(reply, link.dec_keys(alice.qkd_needed(reply)))
    assert parse_header(alice.encrypt(b"3", link.enc_keys(1)).wire).kind == 2  # turn, no prekey


def test_conservative_second_kem_is_mixed_when_both_sides_have_liboqs() -> None:
    require_liboqs()
    from client.protocol.bundle import conservative_kem_available, generate_prekeys

    alg = conservative_kem_available()
    link = KeyLink()
    bundle, secrets = generate_prekeys(identity("bob"), "bob", sae_id="SAE_B", conservative=alg)
    initial, keys = initiate(identity("alice"), "alice", "SAE_A", parse_bundle(bundle.encode()),
                             link.enc_keys(1))
    assert keys.sources == ("QKD", "ML-KEM-768", alg, "X25519")
    bob_keys = respond(identity("bob"), "bob", "SAE_B", bundle, secrets,
                       InitialMessage.decode(initial.encode()), link.dec_keys(initial.qkd_key_ids))
    assert bob_keys.root_initiator == keys.root_initiator


def test_require_policy_session_refuses_to_open_without_qkd() -> None:
    bob = make_bob()
    fetched = parse_bundle(bob.bundle.with_one_time(1).encode())
    with pytest.raises(QkdRequired):
        Session.initiate(identity("alice"), "alice", "SAE_A", fetched, None,
                         config=RatchetConfig(policy=QkdPolicy.REQUIRE))


@pytest.mark.parametrize("hostile", ["../x", "SAE/A", "SAE_A\n", "SAE\x00A", "S" * 65, ""])
def test_a_hostile_initiator_sae_id_is_refused_when_the_handshake_is_read(hostile: str) -> None:
    """Bob fetches dec_keys for the initiator's SAE_ID: it must pass the KME's rule first."""
    link, bob = KeyLink(), make_bob()
    fetched = parse_bundle(bob.bundle.with_one_time(1).encode())
    initial, _ = initiate(identity("alice"), "alice", hostile, fetched, link.enc_keys(1))
    with pytest.raises(MalformedMessage, match="initial message refused: invalid SAE_ID"):
        InitialMessage.decode(initial.encode())
    good, _ = initiate(identity("alice"), "alice", "SAE_A", fetched, link.enc_keys(1))
    assert InitialMessage.decode(good.encode()) == good
