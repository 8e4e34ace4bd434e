"""A peer's SAE_ID is checked by the KME's own rule before it can reach a KME URL.

Mallory publishes validly signed prekey bundles whose SAE_ID would walk or break a KME path
('../', '/', control characters, over-long, percent-encoded dots). Alice runs the real
``qsecret contacts add``: each is refused with a message naming the SAE_ID, exit status 2,
and no contact is left behind (without the check, the contact was added: the KME request
failed and the session went on without QKD). An opening message naming such an SAE_ID as its
sender's is dropped when alice reads it, with the same reason, before any dec_keys request.
tests/kme/test_etsi_api.py shows that the SAE client refuses such a value before any request
and that the KME refuses it in a path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from client.protocol import Session
from client.protocol.bundle import generate_prekeys, parse_bundle_parts
from client.protocol.identity import Identity
from relay import wire
from tests.e2e.stack import Stack
from tests.relay.harness import Client

HOSTILE = {
    "dotdot": "../../kme/v1/stats",
    "slash": "sae-bob/../x",
    "newline": "sae-bob\n",
    "nul": "sae\x00bob",
    "escape": "sae\x1b[31mbob",
    "long": "a" * 65,
    "percent": "%2e%2e",
    "space": "sae bob",
}


class _Signer:
    """What the relay test client needs of an identity: handle, public key, signatures."""

    def __init__(self, handle: str, identity: Identity) -> None:
        self.handle = handle
        self.identity = identity
        self.keypair = type("Pub", (), {"public_key": identity.signing_public})()

    def sign(self, message: bytes) -> bytes:
        return self.identity.sign(message)


async def _publish(relay_url: str, handle: str, sae_id: str) -> None:
    """Upload a bundle, signed for real by ``handle``, that carries ``sae_id``."""
    identity = Identity.generate()
    bundle, _ = generate_prekeys(identity, handle, sae_id=sae_id, one_time_count=2)
    signer = _Signer(handle, identity)
    client = await Client(relay_url, signer).connect()  # type: ignore[arg-type]
    try:
        upload = wire.sign_bundle(handle, identity.signing_public, bundle.signed,
                                  [(k.key_id, k.public) for k in bundle.one_time], signer.sign)
        client.conn.upload_prekeys(upload, req_id="up")
        await client.flush()
        await client.wait(lambda: any(isinstance(e, wire.PrekeysOk | wire.Error)
                                      for e in client.events))
        assert not client.errors, client.errors
    finally:
        await client.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pq_backend: str) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("hostile-sae"))
    try:
        stack.start_relay()
        stack.start_kme()
        stack.init("alice")
        yield stack
    finally:
        stack.stop()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_sae_id_in_a_bundle_is_refused_when_the_contact_is_added(
        stack: Stack, name: str) -> None:
    handle = f"mallory-{name}"
    asyncio.run(_publish(stack.relay_url, handle, HOSTILE[name]))
    result = stack.cli("alice", "contacts", "add", handle)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "bundle refused: invalid SAE_ID" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    listed = stack.cli("alice", "contacts", "list", check=True)
    assert handle not in listed.stdout


def test_a_valid_bundle_from_the_same_path_is_accepted(stack: Stack) -> None:
    """The refusals above come from the SAE_ID alone: the same upload with a good one works."""
    asyncio.run(_publish(stack.relay_url, "mallory-good", "sae-mallory"))
    stack.cli("alice", "contacts", "add", "mallory-good", check=True)


async def _send_opening_message(relay_url: str, handle: str, sae_id: str, to: str) -> None:
    """Open a session to ``to`` from a fresh identity that names ``sae_id`` as its SAE."""
    identity = Identity.generate()
    signer = _Signer(handle, identity)
    client = await Client(relay_url, signer).connect()  # type: ignore[arg-type]
    try:
        client.conn.fetch_prekeys(to, req_id="get")
        await client.flush()
        await client.wait(lambda: any(isinstance(e, wire.Bundle) for e in client.events))
        got = next(e for e in client.events if isinstance(e, wire.Bundle))
        bundle = parse_bundle_parts(to, got.bundle.identity, got.bundle.signed,
                                    got.bundle.signed_sig,
                                    [(k.key_id, k.key, k.sig) for k in got.bundle.one_time])
        outgoing = Session.initiate(identity, handle, sae_id, bundle, None).encrypt(b"hello")
        msg = client.conn.send(to, outgoing.wire)
        await client.flush()
        await client.wait(lambda: msg in client.stored)
    finally:
        await client.close()


@pytest.mark.parametrize("name", ["dotdot", "newline", "long"])
def test_a_hostile_sae_id_in_an_opening_message_is_refused_when_it_is_read(
        stack: Stack, name: str) -> None:
    stack.cli("alice", "recv", check=True)  # alice's bundle is on the relay
    handle = f"opener-{name}"
    asyncio.run(_send_opening_message(stack.relay_url, handle, HOSTILE[name], "alice"))
    # The dropped message counts as handled: recv ends at once, not after --timeout (it once
    # did when the drop was counted before the login's backlog was set).
    result = stack.cli("alice", "recv", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    assert "hello" not in result.stdout
    assert "initial message refused: invalid SAE_ID" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    listed = stack.cli("alice", "contacts", "list", check=True)
    assert handle not in listed.stdout
