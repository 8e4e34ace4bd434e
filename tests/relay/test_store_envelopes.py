"""Store.envelopes: the batched re-read a redelivery makes (relay/envelopes.py resend_due).

Only the caller's own queued envelopes come back, in seq order, with the bytes that were
stored; acked, unknown and other recipients' seqs are left out, so a redelivery can never
hand one user's envelope to another.
"""

from __future__ import annotations

from relay.store import StoreLimits
from tests.relay.stores import StoreFactory


async def test_envelopes_returns_only_the_recipients_queued_ones_in_order(
        stores: StoreFactory) -> None:
    store = await stores.open(StoreLimits())
    try:
        for handle in ("alice", "bob", "carol"):
            await store.bind_identity(handle, handle.encode())
        to_bob = [store.new_envelope("alice", "bob", f"m{i}", bytes([i]) * (i + 1))
                  for i in range(5)]
        to_carol = store.new_envelope("alice", "carol", "c", b"carol's")
        for envelope in [*to_bob, to_carol]:
            await store.enqueue(envelope)
        await store.ack("bob", [to_bob[1].seq])
        seqs = [to_bob[3].seq, to_carol.seq, to_bob[1].seq, 10**9, to_bob[0].seq,
                to_bob[4].seq]
        got = await store.envelopes("bob", seqs)
        assert got == [to_bob[0], to_bob[3], to_bob[4]]  # same fields, same bytes
        assert await store.envelopes("carol", [e.seq for e in to_bob]) == []
        assert await store.envelopes("bob", []) == []
        # More seqs than one statement takes: read in chunks, still one answer in order.
        many = [store.new_envelope("carol", "bob", f"n{i}", b"n") for i in range(1200)]
        for envelope in many:
            store.enqueue_then(envelope, lambda ok, value: None)
        await store.barrier()
        got = await store.envelopes("bob", [e.seq for e in reversed(many)])
        assert got == many
    finally:
        await store.close()
