"""A peer's SAE_ID is checked by the KME's own rule before it can reach a KME URL.

Mallory publishes validly signed prekey bundles whose SAE_ID would walk or break a KME path
('../', '/', control characters, over-long, percent-encoded dots). Alice runs the real
``qsecret contacts add``: each is refused with a message naming the SAE_ID, exit status 2,
and no contact is left behind (without the check, the contact was added: the KME request
failed and the session went on without QKD). tests/kme/test_etsi_api.py shows that the SAE
client refuses such a value before any request and that the KME refuses it in a path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from client.protocol.bundle import generate_prekeys
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
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
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
