"""Prekey bundles of every supported algorithm set fit the relay's limits.

The relay sizes its limits from keysource.pq.sizes (published key sizes), so a relay
without liboqs still admits the half-megabyte Classic McEliece prekey a liboqs client
makes. The first tests need no liboqs: they build the largest bundle from the table.
The liboqs tests check the table against liboqs and upload a real conservative bundle.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from client.protocol import bundle as client_bundle
from client.protocol.identity import Identity as ClientIdentity
from keysource import pq
from keysource.pq import KeyPair, sizes
from relay import wire
from tests.relay.harness import HYBRID, Client, Identity, start_relay

WIDEST_TEXT = "x" * 255  # SAE_ID, KME hint: s8 strings
WIDEST_REQ_ID = "r" * 64
WIDEST_KEY_ID = 0xFFFFFFFF


def _signed_part(pq_alg: str, conservative: str | None) -> bytes:
    """The client's encoding of a signed part with keys of the published lengths."""
    size = sizes.KEM_SIZES
    c_prekey = None
    if conservative is not None:
        c_prekey = client_bundle.Prekey(WIDEST_KEY_ID, conservative,
                                        os.urandom(size[conservative].public_key))
    part = client_bundle.SignedPart(
        os.urandom(32), WIDEST_TEXT, WIDEST_TEXT,
        client_bundle.Prekey(WIDEST_KEY_ID, "X25519", os.urandom(size["X25519"].public_key)),
        client_bundle.Prekey(WIDEST_KEY_ID, pq_alg, os.urandom(size[pq_alg].public_key)),
        c_prekey,
    )
    return part.encode()


def _largest_signed_part() -> bytes:
    parts = [_signed_part(pq_alg, conservative) for pq_alg, conservative in itertools.product(
        sizes.PREKEY_KEMS, (None, *sizes.CONSERVATIVE_KEMS))]
    return max(parts, key=len)


def _largest_bundle(handle: str, identity: Identity, *, signed: bytes | None = None
                    ) -> wire.PrekeyBundle:
    """Signed for real (the relay verifies every signature), keys of the largest sizes."""
    signed = _largest_signed_part() if signed is None else signed
    key_size = sizes.largest_public_key(sizes.PREKEY_KEMS)
    one_time = [(WIDEST_KEY_ID - i, os.urandom(key_size))
                for i in range(wire.MAX_ONE_TIME_PER_UPLOAD)]
    return wire.sign_bundle(handle, identity.keypair.public_key, signed, one_time, identity.sign)


def test_client_algorithms_are_in_the_size_table() -> None:
    assert set(client_bundle.CONSERVATIVE_KEMS) <= set(sizes.CONSERVATIVE_KEMS)
    assert client_bundle.PQ_KEM in sizes.PREKEY_KEMS
    assert (wire.HYBRID_PUBLIC_KEY_BYTES, wire.HYBRID_SIGNATURE_BYTES) == (
        HYBRID.public_key_size, HYBRID.signature_size)
    # What the openssl backend (always present) reports agrees with the table.
    for name in sizes.PREKEY_KEMS:
        kem = pq.get_kem(name, "openssl")
        published = sizes.KEM_SIZES[name]
        assert (kem.sizes.public_key, kem.sizes.ciphertext, kem.sizes.shared_secret) == (
            published.public_key, published.ciphertext, published.shared_secret)


def test_the_largest_bundle_passes_validation_and_the_frame_limit() -> None:
    """The worst case any supported algorithm set can produce, parsed as the relay does."""
    identity = Identity("a" * 32)
    signed = _largest_signed_part()
    assert len(signed) > sizes.KEM_SIZES["Classic-McEliece-460896"].public_key
    upload = wire.PrekeysUpload(_largest_bundle(identity.handle, identity, signed=signed),
                                WIDEST_REQ_ID).encode()
    assert len(upload.encode()) <= wire.MAX_FRAME_BYTES
    assert len(upload) <= wire.frames.largest_prekeys_upload_chars()
    parsed = wire.parse_client_frame(upload)
    assert isinstance(parsed, wire.PrekeysUpload) and parsed.bundle.signed == signed
    wire.verify_bundle(identity.handle, parsed.bundle, HYBRID.verify)
    # What a fetcher gets back (the signed part and one one-time prekey) fits too.
    answer = wire.Bundle(identity.handle, wire.PrekeyBundle(
        parsed.bundle.identity, signed, parsed.bundle.signed_sig, parsed.bundle.one_time[:1]),
        2**53 - 1, WIDEST_REQ_ID).encode()
    assert len(answer.encode()) <= wire.MAX_FRAME_BYTES
    assert isinstance(wire.parse_server_frame(answer), wire.Bundle)
    # Binary frames stay inside the websocket limit as well.
    assert wire.HEADER_BYTES + wire.MAX_BINARY_PAYLOAD <= wire.MAX_FRAME_BYTES


async def test_a_relay_stores_and_serves_the_largest_bundle(tmp_path: Path) -> None:
    """A real relay (no liboqs needed) takes the upload, tied to its request, and serves it."""
    relay = start_relay(tmp_path / "relay")
    try:
        owner_id = Identity("mceliece")
        owner = await Client(relay.url, owner_id).connect()
        assert owner.events[0].limits["max_frame"] == wire.MAX_FRAME_BYTES
        assert owner.events[0].limits["max_signed_part"] == wire.MAX_SIGNED_PART_BYTES
        bundle = _largest_bundle(owner_id.handle, owner_id)
        owner.conn.upload_prekeys(bundle, req_id="big-upload")
        await owner.flush()
        await owner.wait(lambda: any(isinstance(e, wire.PrekeysOk | wire.Error)
                                     for e in owner.events))
        assert not owner.errors, owner.errors
        ok = next(e for e in owner.events if isinstance(e, wire.PrekeysOk))
        assert (ok.stored, ok.id) == (wire.MAX_ONE_TIME_PER_UPLOAD, "big-upload")

        fetcher = await Client(relay.url, Identity("fetcher")).connect()
        fetcher.conn.fetch_prekeys(owner_id.handle, req_id="get")
        await fetcher.flush()
        await fetcher.wait(lambda: any(isinstance(e, wire.Bundle) for e in fetcher.events))
        got = next(e for e in fetcher.events if isinstance(e, wire.Bundle))
        assert got.bundle.signed == bundle.signed and got.id == "get"
        wire.verify_bundle(owner_id.handle, got.bundle, HYBRID.verify)
        await owner.close()
        await fetcher.close()
    finally:
        relay.stop()


async def test_a_refused_upload_is_an_error_tied_to_the_request(tmp_path: Path) -> None:
    """Over a field limit: the error frame names the request (so the client's wait ends)."""
    relay = start_relay(tmp_path / "relay")
    try:
        owner_id = Identity("owner")
        owner = await Client(relay.url, owner_id).connect()
        bundle = wire.sign_bundle(owner_id.handle, owner_id.keypair.public_key,
                                  b"s" * (wire.MAX_SIGNED_PART_BYTES + 1), [], owner_id.sign)
        owner.conn.upload_prekeys(bundle, req_id="too-big")
        await owner.flush()
        error = await owner.next_error()
        assert (error.code, error.id) == ("too_large", "too-big")
        bad_sig = wire.PrekeyBundle(bundle.identity, b"signed", bundle.signed_sig)
        owner.conn.upload_prekeys(bad_sig, req_id="bad-sig")
        await owner.flush()
        error = await owner.next_error()
        assert (error.code, error.id) == ("bad_prekeys", "bad-sig")
        await owner.close()
    finally:
        relay.stop()


def test_the_size_table_matches_liboqs(liboqs: None) -> None:
    from keysource.pq.liboqs_backend import load_oqs

    oqs = load_oqs()
    for name, published in sizes.KEM_SIZES.items():
        if name == "X25519":
            continue
        with oqs.KeyEncapsulation(name) as kem:
            details = kem.details
        assert (details["length_public_key"], details["length_secret_key"],
                details["length_ciphertext"], details["length_shared_secret"]) == (
            published.public_key, published.secret_key, published.ciphertext,
            published.shared_secret), name
    for name, published in sizes.SIGNATURE_SIZES.items():
        if name == "Ed25519":
            continue
        with oqs.Signature(name) as sig:
            details = sig.details
        assert (details["length_public_key"], details["length_secret_key"],
                details["length_signature"]) == (
            published.public_key, published.secret_key, published.signature), name


async def test_a_real_conservative_bundle_reaches_a_real_relay(liboqs: None,
                                                               tmp_path: Path) -> None:
    """Each conservative KEM liboqs offers: generate, upload, fetch, parse as a peer would."""
    offered = [n for n in client_bundle.CONSERVATIVE_KEMS
               if n in pq.backend_status("liboqs").kems]
    assert offered
    relay = start_relay(tmp_path / "relay")
    try:
        for index, kem_name in enumerate(offered):
            identity = ClientIdentity.generate()
            handle = f"oqs{index}"
            bundle, _ = client_bundle.generate_prekeys(
                identity, handle, sae_id="SAE_X", conservative=kem_name,
                one_time_count=wire.MAX_ONE_TIME_PER_UPLOAD)
            wire_identity = Identity(handle, KeyPair(identity.signing_public,
                                                     identity.signing_secret))
            owner = await Client(relay.url, wire_identity).connect()
            owner.conn.upload_prekeys(bundle.to_relay(), req_id="up")
            await owner.flush()
            await owner.wait(lambda o=owner: any(isinstance(e, wire.PrekeysOk | wire.Error)
                                                 for e in o.events), 30)
            assert not owner.errors, (kem_name, owner.errors)
            fetcher = await Client(relay.url, Identity(f"peer{index}")).connect()
            fetcher.conn.fetch_prekeys(handle, req_id="get")
            await fetcher.flush()
            await fetcher.wait(lambda f=fetcher: any(isinstance(e, wire.Bundle)
                                                     for e in f.events), 30)
            got = next(e for e in fetcher.events if isinstance(e, wire.Bundle))
            parsed = client_bundle.parse_bundle_parts(
                handle, got.bundle.identity, got.bundle.signed, got.bundle.signed_sig,
                [(k.key_id, k.key, k.sig) for k in got.bundle.one_time])
            assert parsed.part.conservative_prekey is not None
            assert parsed.part.conservative_prekey.alg == kem_name
            await owner.close()
            await fetcher.close()
    finally:
        relay.stop()
