"""Every ETSI GS QKD 014 endpoint and error case, over real HTTPS with mutual TLS.

A real ``qsecret kme pair`` process (two KMEs, each on its own HTTPS port) serves keys the
tests put into both pools, exactly as the QKD link would.
"""

from __future__ import annotations

import base64
import ssl
import uuid
from pathlib import Path

import pytest

from keysource.kme.client import (
    AsyncSaeClient,
    KmeBadRequest,
    KmeConnectionError,
    KmeUnauthorized,
    KmeUnavailable,
    SaeClient,
)
from keysource.kme.pki import Pki
from keysource.kme.runtime import KME_A, KME_B, SAE_A, SAE_B

from .conftest import Pair, RawHttp, start_pair


def raw(pair: Pair, url: str, sae: str | None) -> RawHttp:
    """A plain HTTP client (for requests the SaeClient would never send)."""
    ctx = ssl.create_default_context(cafile=str(pair.pki.ca_cert))
    if sae is not None:
        paths = pair.pki.sae(sae)
        ctx.load_cert_chain(str(paths.cert), str(paths.key))
    return RawHttp(url, ctx)


def test_status_reports_every_field(pair: Pair) -> None:
    pair.fill(5)
    with pair.alice() as alice:
        status = alice.get_status(SAE_B)
    assert status.source_KME_ID == KME_A and status.target_KME_ID == KME_B
    assert status.master_SAE_ID == SAE_A and status.slave_SAE_ID == SAE_B
    assert status.key_size == 256
    assert status.stored_key_count >= 5
    assert status.max_key_count == 100_000
    assert status.max_key_per_request == 16
    assert (status.min_key_size, status.max_key_size, status.max_SAE_ID_count) == (8, 8192, 0)
    with raw(pair, pair.url_b, SAE_B) as http:
        body = http.get(f"/api/v1/keys/{SAE_A}/status").json()
    assert set(body) == {
        "source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID", "key_size",
        "stored_key_count", "max_key_count", "max_key_per_request", "max_key_size",
        "min_key_size", "max_SAE_ID_count",
    }
    assert body["source_KME_ID"] == KME_B and body["master_SAE_ID"] == SAE_B


def test_enc_keys_at_master_dec_keys_at_slave_match(pair: Pair) -> None:
    pair.fill(4)
    with pair.alice() as alice, pair.bob() as bob:
        sent = alice.get_enc_keys(SAE_B, number=3)
        assert len({k.key_ID for k in sent}) == 3
        assert all(len(k.key) == 32 for k in sent)
        got = bob.get_dec_keys(SAE_A, [k.key_ID for k in sent])
        assert [(k.key_ID, k.key) for k in got] == [(k.key_ID, k.key) for k in sent]
        # Once only for the master: enc_keys never hands out those key_IDs again.
        later = alice.get_enc_keys(SAE_B, number=1)
        assert not {k.key_ID for k in later} & {k.key_ID for k in sent}


def test_a_lost_dec_keys_answer_is_served_again_to_the_same_sae_only(pair: Pair) -> None:
    """The KME keeps a dec_keys answer for the SAE that fetched it during the redelivery
    grace (keysource/kme/pool.py): bob, who may have lost it, asks again and gets the same
    keys; carol, another SAE of the same KME, gets the 400 of any delivered key."""
    _enrol_carol(pair)
    pair.fill(2)
    with pair.alice() as alice, pair.bob() as bob, \
            pair.client(pair.url_b, "sae-carol") as carol:
        sent = alice.get_enc_keys(SAE_B, number=2)
        ids = [k.key_ID for k in sent]
        first = bob.get_dec_keys(SAE_A, ids)
        with raw(pair, pair.url_b, SAE_B) as b:  # the same SAE, a new TLS connection
            resp = b.post(f"/api/v1/keys/{SAE_A}/dec_keys",
                          json={"key_IDs": [{"key_ID": i} for i in ids]})
        assert resp.status_code == 200, resp.text
        again = [(k["key_ID"], base64.b64decode(k["key"])) for k in resp.json()["keys"]]
        assert again == [(k.key_ID, k.key) for k in first] == [(k.key_ID, k.key) for k in sent]
        with pytest.raises(KmeBadRequest) as err:
            carol.get_dec_keys(SAE_A, ids)
        assert "unknown" in err.value.message
        assert {"unknown_key_IDs": ids} in err.value.details
        with pytest.raises(KmeBadRequest):
            bob.get_dec_keys("sae-carol", ids)  # bob, naming another master
        assert bob.get_dec_keys(SAE_A, ids[1:]) == first[1:]


def test_with_no_redelivery_grace_a_key_is_served_once_only(tmp_path: Path) -> None:
    strict = start_pair(tmp_path, "--redelivery-grace", "0")
    try:
        strict.fill(1)
        with strict.alice() as alice, strict.bob() as bob:
            (sent,) = alice.get_enc_keys(SAE_B, number=1)
            assert bob.get_dec_keys(SAE_A, [sent.key_ID]) == [sent]
            with pytest.raises(KmeBadRequest) as err:
                bob.get_dec_keys(SAE_A, [sent.key_ID])
            assert "unknown" in err.value.message
    finally:
        strict.process.stop()


def test_get_forms_of_enc_and_dec_keys(pair: Pair) -> None:
    pair.fill(2)
    with raw(pair, pair.url_a, SAE_A) as a, raw(pair, pair.url_b, SAE_B) as b:
        resp = a.get(f"/api/v1/keys/{SAE_B}/enc_keys", params={"number": "1", "size": "256"})
        assert resp.status_code == 200, resp.text
        (key,) = resp.json()["keys"]
        resp = b.get(f"/api/v1/keys/{SAE_A}/dec_keys", params={"key_ID": key["key_ID"]})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"keys": [key]}
        assert len(base64.b64decode(key["key"])) == 32


def test_master_at_the_follower_kme(pair: Pair) -> None:
    """bob is master at KME B (the follower): KME A allocates, bob and alice still agree."""
    pair.fill(3)
    with pair.alice() as alice, pair.bob() as bob:
        sent = bob.get_enc_keys(SAE_A, number=2)
        got = alice.get_dec_keys(SAE_B, [k.key_ID for k in sent])
    assert [k.key for k in got] == [k.key for k in sent]


@pytest.mark.parametrize("size", [8, 128, 264, 512, 8192])
def test_key_sizes_concatenate_or_truncate_identically(pair: Pair, size: int) -> None:
    pair.fill(-(-size // 256))
    with pair.alice() as alice, pair.bob() as bob:
        (sent,) = alice.get_enc_keys(SAE_B, number=1, size=size)
        (got,) = bob.get_dec_keys(SAE_A, [sent.key_ID])
    assert len(sent.key) * 8 == size
    assert got.key == sent.key


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"number": 1, "size": 100}, "multiple of 8"),
        ({"number": 1, "size": 0}, "out of range"),
        ({"number": 1, "size": 16384}, "out of range"),
        ({"number": 17}, "max_key_per_request"),
        ({"number": 0}, "at least 1"),
        ({"number": "two"}, "integer"),
        ({"number": True}, "integer"),
        ({"number": 1, "additional_slave_SAE_IDs": ["sae-carol"]}, "additional_slave"),
        ({"number": 1, "extension_mandatory": [{"abc_route_type": "direct"}]},
         "mandatory extensions"),
        ({"number": 1, "colour": "blue"}, "unknown request fields"),
    ],
)
def test_enc_keys_bad_requests_are_400(pair: Pair, body: dict[str, object], fragment: str) -> None:
    with raw(pair, pair.url_a, SAE_A) as http:
        before = pair_stats(http)
        resp = http.post(f"/api/v1/keys/{SAE_B}/enc_keys", json=body)
        assert resp.status_code == 400, resp.text
        assert fragment in resp.json()["message"] + str(resp.json().get("details"))
        assert pair_stats(http) == before  # nothing was reserved or taken


def pair_stats(http: RawHttp) -> tuple[int, int]:
    pool = http.get("/kme/v1/stats").json()["pool"]
    return pool["free"], pool["delivered"]


def test_optional_extensions_are_ignored(pair: Pair) -> None:
    pair.fill(1)
    with raw(pair, pair.url_a, SAE_A) as http:
        resp = http.post(
            f"/api/v1/keys/{SAE_B}/enc_keys",
            json={"number": 1, "extension_optional": [{"abc_route_type": "direct"}]},
        )
    assert resp.status_code == 200, resp.text


def test_malformed_json_and_dec_keys_bodies_are_400(pair: Pair) -> None:
    with raw(pair, pair.url_b, SAE_B) as http:
        resp = http.post(f"/api/v1/keys/{SAE_A}/dec_keys", content=b"{not json",
                         headers={"content-type": "application/json"})
        assert resp.status_code == 400 and "JSON" in resp.json()["message"]
        for body in ({}, {"key_IDs": []}, {"key_IDs": ["x"]}, {"key_IDs": [{"key_ID": "nope"}]}):
            resp = http.post(f"/api/v1/keys/{SAE_A}/dec_keys", json=body)
            assert resp.status_code == 400, (body, resp.text)
        dup = str(uuid.uuid4())
        resp = http.post(f"/api/v1/keys/{SAE_A}/dec_keys",
                         json={"key_IDs": [{"key_ID": dup}, {"key_ID": dup}]})
        assert resp.status_code == 400 and "duplicates" in resp.json()["message"]
        resp = http.get(f"/api/v1/keys/{SAE_A}/dec_keys")
        assert resp.status_code == 400


def test_unknown_key_id_is_400_and_takes_nothing(pair: Pair) -> None:
    pair.fill(1)
    with pair.alice() as alice, pair.bob() as bob:
        (sent,) = alice.get_enc_keys(SAE_B, number=1)
        stranger = str(uuid.uuid4())
        with pytest.raises(KmeBadRequest) as err:
            bob.get_dec_keys(SAE_A, [sent.key_ID, stranger])
        assert {"unknown_key_IDs": [stranger]} in err.value.details
        # All or nothing: the valid key is still there for bob.
        (got,) = bob.get_dec_keys(SAE_A, [sent.key_ID])
        assert got.key == sent.key


def _enrol_carol(pair: Pair) -> None:
    """A third SAE at KME B (once per module's PKI): another SAE than the key's slave."""
    if not pair.pki.sae("sae-carol").cert.exists():
        pair.pki.issue_sae("sae-carol")


def test_key_of_another_sae_is_refused(pair: Pair) -> None:
    _enrol_carol(pair)
    pair.fill(1)
    with pair.alice() as alice, pair.bob() as bob, \
            pair.client(pair.url_b, "sae-carol") as carol:
        (sent,) = alice.get_enc_keys(SAE_B, number=1)
        # carol (a valid SAE at KME B) asks for bob's key, claiming alice as master.
        with pytest.raises(KmeUnauthorized) as err:
            carol.get_dec_keys(SAE_A, [sent.key_ID])
        assert {"key_IDs_of_other_SAEs": [sent.key_ID]} in err.value.details
        # bob with the wrong master is refused too.
        with pytest.raises(KmeUnauthorized):
            bob.get_dec_keys("sae-carol", [sent.key_ID])
        # The master cannot fetch its own key as if it were the slave, at its own KME.
        with pytest.raises(KmeBadRequest):
            alice.get_dec_keys(SAE_A, [sent.key_ID])
        (got,) = bob.get_dec_keys(SAE_A, [sent.key_ID])
        assert got.key == sent.key


def test_enc_keys_for_oneself_is_400(pair: Pair) -> None:
    with pair.alice() as alice, pytest.raises(KmeBadRequest):
        alice.get_enc_keys(SAE_A, number=1)


def test_not_enough_keys_is_503_and_takes_nothing(pair: Pair) -> None:
    with raw(pair, pair.url_a, SAE_A) as http:
        free, delivered = pair_stats(http)
        assert free < 16 * 32, "the shared pool should hold few keys"
        resp = http.post(f"/api/v1/keys/{SAE_B}/enc_keys", json={"number": 16, "size": 8192})
        assert resp.status_code == 503, resp.text
        body = resp.json()
        assert "not enough keys" in body["message"]
        assert body["details"][0]["requested_keys"] == 16
        assert pair_stats(http) == (free, delivered)


def test_empty_pool_is_503(tmp_path: Path) -> None:
    empty = start_pair(tmp_path)
    try:
        with empty.alice() as alice:
            assert alice.get_status(SAE_B).stored_key_count == 0
            with pytest.raises(KmeUnavailable) as err:
                alice.get_enc_keys(SAE_B, number=1)
        assert err.value.status == 503
        empty.fill(1)
        with empty.alice() as alice:
            assert len(alice.get_enc_keys(SAE_B, number=1)) == 1
    finally:
        empty.process.stop()


def test_missing_client_certificate_is_401(pair: Pair) -> None:
    with raw(pair, pair.url_a, None) as http:
        for path in (f"/api/v1/keys/{SAE_B}/status", f"/api/v1/keys/{SAE_B}/enc_keys",
                     f"/api/v1/keys/{SAE_B}/dec_keys?key_ID={uuid.uuid4()}", "/kme/v1/stats"):
            resp = http.get(path)
            assert resp.status_code == 401, (path, resp.text)
            assert "certificate" in resp.json()["message"]


def test_certificate_of_another_ca_is_refused_at_tls(pair: Pair, tmp_path: Path) -> None:
    rogue = Pki(tmp_path / "rogue")
    rogue.ensure(sae_ids=[SAE_A])  # same SAE name, wrong CA
    paths = rogue.sae(SAE_A)
    client = SaeClient(pair.url_a, ca=pair.pki.ca_cert, cert=paths.cert, key=paths.key)
    with client, pytest.raises(KmeConnectionError):
        client.get_enc_keys(SAE_B, number=1)


def test_client_refuses_a_kme_of_another_ca(pair: Pair, tmp_path: Path) -> None:
    rogue = Pki(tmp_path / "rogue")
    rogue.ensure(sae_ids=[SAE_A])
    paths = pair.pki.sae(SAE_A)
    client = SaeClient(pair.url_a, ca=rogue.ca_cert, cert=paths.cert, key=paths.key)
    with client, pytest.raises(KmeConnectionError):
        client.get_status(SAE_B)


def test_kme_certificate_is_not_an_sae_and_saes_cannot_use_peer_routes(pair: Pair) -> None:
    kme = pair.pki.kme(KME_B)
    client = SaeClient(pair.url_a, ca=pair.pki.ca_cert, cert=kme.cert, key=kme.key)
    with client, pytest.raises(KmeUnauthorized):
        client.get_enc_keys(SAE_B, number=1)
    with raw(pair, pair.url_b, SAE_A) as http:
        resp = http.post("/kme/v1/bindings", json={})
        assert resp.status_code == 401
        resp = http.post("/kme/v1/allocate", json={})
        assert resp.status_code == 401


def test_invalid_sae_id_in_path_is_400(pair: Pair) -> None:
    with raw(pair, pair.url_a, SAE_A) as http:
        resp = http.get("/api/v1/keys/bad%20id!/status")
        assert resp.status_code == 400 and "slave_SAE_ID" in resp.json()["message"]


@pytest.mark.parametrize("segment", ["sae-b%0A", "sae-b%0D%0A", "sae%2Fb", "sae%00b",
                                     "sae%1Bb", "a" * 65, "%2E%2E", "-sae"])
def test_a_sae_id_breaking_the_rule_in_a_path_is_400(pair: Pair, segment: str) -> None:
    """Full match: a trailing newline is refused too (``^...$`` with ``match`` let it by)."""
    with raw(pair, pair.url_a, SAE_A) as http:
        resp = http.get(f"/api/v1/keys/{segment}/status")
        assert resp.status_code in (400, 404), resp.text
        if resp.status_code == 400:
            assert "invalid slave_SAE_ID" in resp.json()["message"]


@pytest.mark.parametrize("hostile", ["../../kme/v1/stats", "sae-b/../x", "sae-b\n", "sae b",
                                     "sae\x00b", "a" * 65, "%2e%2e", ""])
async def test_the_sae_client_refuses_a_bad_sae_id_before_any_request(
        pair: Pair, hostile: str) -> None:
    """A peer's SAE_ID never reaches a URL: refused by the same rule, nothing taken."""
    hostile = hostile.encode().decode("unicode_escape")
    pair.fill(1)
    pki = pair.pki
    a = pki.sae(SAE_A)
    async with AsyncSaeClient(pair.url_a, ca=pki.ca_cert, cert=a.cert, key=a.key) as alice:
        before = (await alice.get_status(SAE_B)).stored_key_count
        for call in (alice.get_status(hostile), alice.get_enc_keys(hostile, number=1),
                     alice.get_dec_keys(hostile, [str(uuid.uuid4())])):
            with pytest.raises(KmeBadRequest, match="not sent to the KME: invalid"):
                await call
        assert (await alice.get_status(SAE_B)).stored_key_count == before


async def test_async_client_round_trip(pair: Pair) -> None:
    pair.fill(2)
    pki = pair.pki
    a, b = pki.sae(SAE_A), pki.sae(SAE_B)
    async with AsyncSaeClient(pair.url_a, ca=pki.ca_cert, cert=a.cert, key=a.key) as alice, \
            AsyncSaeClient(pair.url_b, ca=pki.ca_cert, cert=b.cert, key=b.key) as bob:
        status = await alice.get_status(SAE_B)
        assert status.stored_key_count >= 2
        sent = await alice.get_enc_keys(SAE_B, number=2, size=128)
        got = await bob.get_dec_keys(SAE_A, [k.key_ID for k in sent])
        assert [k.key for k in got] == [k.key for k in sent]
        # A second dec_keys by bob within the redelivery grace: the same keys again.
        assert await bob.get_dec_keys(SAE_A, [sent[0].key_ID]) == got[:1]


def test_key_material_never_in_repr(pair: Pair) -> None:
    pair.fill(1)
    with pair.alice() as alice:
        (key,) = alice.get_enc_keys(SAE_B, number=1)
    assert key.key.hex() not in repr(key) and str(key.key) not in repr(key)


async def test_async_client_refuses_a_kme_of_another_ca_and_a_rogue_sae(pair: Pair,
                                                                         tmp_path: Path) -> None:
    rogue = Pki(tmp_path / "rogue")
    rogue.ensure(sae_ids=[SAE_A])
    good, fake = pair.pki.sae(SAE_A), rogue.sae(SAE_A)
    async with AsyncSaeClient(pair.url_a, ca=rogue.ca_cert, cert=good.cert,
                              key=good.key) as client:
        with pytest.raises(KmeConnectionError, match="cannot reach the KME"):
            await client.get_status(SAE_B)
    async with AsyncSaeClient(pair.url_a, ca=pair.pki.ca_cert, cert=fake.cert,
                              key=fake.key) as client:
        with pytest.raises(KmeConnectionError):
            await client.get_enc_keys(SAE_B, number=1)


async def test_async_client_reuses_one_connection_and_reconnects_after_a_kme_restart(
        tmp_path: Path) -> None:
    """Keep-alive across requests; after the KME restarts, the next request reconnects."""
    from tests.e2e.stack import free_port

    ports = ("--port-a", str(free_port()), "--port-b", str(free_port()))
    pair = start_pair(tmp_path, *ports)
    try:
        pair.fill(4)
        a = pair.pki.sae(SAE_A)
        async with AsyncSaeClient(pair.url_a, ca=pair.pki.ca_cert, cert=a.cert,
                                  key=a.key) as alice:
            await alice.get_status(SAE_B)
            (first,) = alice._http._idle
            await alice.get_status(SAE_B)
            assert alice._http._idle == [first]  # the same connection, reused
            pair.process.stop()
            pair = start_pair(tmp_path, *ports)
            # A POST is never sent twice, so this needs the closed connection to be noticed
            # before reuse (not a retry after a failure).
            (key,) = await alice.get_enc_keys(SAE_B, number=1)
            assert len(key.key) == 32
            (second,) = alice._http._idle
            assert second is not first
    finally:
        pair.process.stop()
