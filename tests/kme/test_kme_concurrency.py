"""The SAE client under concurrency and cancellation, against a real KME pair over mTLS.

The KME deletes a key when it hands it out, so a request cancelled after it was sent must
neither leave its connection half used (issue 13: the next request then failed with h11's
LocalProtocolError and QKD silently dropped out of the conversation) nor lose the keys of
its answer: they wait in the client's reserve for the next caller (see AsyncSaeClient).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keysource.kme.client import AsyncSaeClient, KeyStatus, QkdKey
from keysource.kme.runtime import KME_A, KME_B, SAE_A, SAE_B, pool_path

from .conftest import Pair, start_pair

OPERATIONS = 50
CANCEL_SHARE = 0.4
CANCEL_WITHIN_S = 0.1  # cancellations land anywhere from before sending to after answering
STORM_DEADLINE_S = 60


@pytest.fixture
def kmes(tmp_path: Path) -> Iterator[Pair]:
    running = start_pair(tmp_path, "--max-key-per-request", "32")
    try:
        yield running
    finally:
        running.process.stop()


def client(pair: Pair, url: str, sae: str) -> AsyncSaeClient:
    paths = pair.pki.sae(sae)
    return AsyncSaeClient(url, ca=pair.pki.ca_cert, cert=paths.cert, key=paths.key)


def delivered(pair: Pair, kme_id: str, sae: str) -> Counter[str]:
    """key_IDs the KME's journal says it handed to ``sae`` (read-only, beside the KME)."""
    uri = f"file:{pool_path(pair.data, kme_id)}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        rows = db.execute("SELECT bound_to FROM delivered WHERE sae = ?", (sae,)).fetchall()
    # one row per pool key; a key of more than 256 bits is several pool keys
    return Counter({r[0]: 1 for r in rows})


async def cancel_once_sent(client: AsyncSaeClient, call: Awaitable[Any]) -> None:
    """Run ``call`` and cancel it as soon as its request is committed to the wire."""
    task = asyncio.ensure_future(call)
    async with asyncio.timeout(10):
        while not client._http._exchanges:
            await asyncio.sleep(0)  # until the shielded exchange exists; no clock involved
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancelled_enc_keys_hands_its_keys_to_the_next_caller(kmes: Pair) -> None:
    kmes.fill(8)
    async with client(kmes, kmes.url_a, SAE_A) as alice, \
            client(kmes, kmes.url_b, SAE_B) as bob:
        await cancel_once_sent(alice, alice.get_enc_keys(SAE_B, number=3))
        await alice.drain()
        assert alice.reserve.enc_count(SAE_B) == 3
        answered = set(delivered(kmes, KME_A, SAE_A))
        assert len(answered) == 3
        # The next caller gets two of them without a request, then one kept + one fresh.
        first = await alice.get_enc_keys(SAE_B, number=2)
        assert set(delivered(kmes, KME_A, SAE_A)) == answered
        second = await alice.get_enc_keys(SAE_B, number=2)
        assert alice.reserve.enc_count(SAE_B) == 0
        got = [k.key_ID for k in first + second]
        assert len(set(got)) == 4 and answered < set(got)
        assert set(delivered(kmes, KME_A, SAE_A)) == set(got)
        # Bob: a cancelled dec_keys, retried with the same key_IDs, gets the same keys.
        ids = [k.key_ID for k in first + second]
        await cancel_once_sent(bob, bob.get_dec_keys(SAE_A, ids))
        await bob.drain()
        assert bob.reserve.dec_count() == 4
        again = await bob.get_dec_keys(SAE_A, ids)
        assert [(k.key_ID, k.key) for k in again] == [(k.key_ID, k.key) for k in first + second]
        assert bob.reserve.dec_count() == 0
        assert set(delivered(kmes, KME_B, SAE_B)) == set(ids)
        # The connections are all reusable afterwards.
        assert (await alice.get_status(SAE_B)).stored_key_count >= 0
        assert (await bob.get_status(SAE_A)).stored_key_count >= 0


async def test_fifty_concurrent_calls_with_random_cancellations(kmes: Pair) -> None:
    """50 enc_keys / dec_keys / status calls at once, a seeded share of them cancelled at
    random moments: no protocol error, no key twice, every key answered 200 reaches a
    caller (the KMEs' journals are the reference)."""
    rng = random.Random(20261206)
    kmes.fill(400)
    async with client(kmes, kmes.url_a, SAE_A) as alice, \
            client(kmes, kmes.url_b, SAE_B) as bob:
        kinds = ["enc"] * 20 + ["dec"] * 15 + ["status"] * 15
        rng.shuffle(kinds)
        # Keys for the dec_keys calls, fetched beforehand (two per call).
        shared = await alice.get_enc_keys(SAE_B, number=15 * 2)
        material = {k.key_ID: k.key for k in shared}
        dec_batches = [[k.key_ID for k in shared[i:i + 2]] for i in range(0, 30, 2)]
        enc_before = delivered(kmes, KME_A, SAE_A)
        dec_before = delivered(kmes, KME_B, SAE_B)

        calls: list[tuple[str, Any, Callable[[], Awaitable[Any]]]] = []
        for kind in kinds:
            if kind == "enc":
                number = rng.randint(1, 4)
                calls.append((kind, number,
                              lambda n=number: alice.get_enc_keys(SAE_B, number=n)))
            elif kind == "dec":
                ids = dec_batches.pop()
                calls.append((kind, ids, lambda ids=ids: bob.get_dec_keys(SAE_A, ids)))
            elif rng.random() < 0.5:
                calls.append((kind, None, lambda: alice.get_status(SAE_B)))
            else:
                calls.append((kind, None, lambda: bob.get_status(SAE_A)))

        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(make()) for _, _, make in calls]
        for task in tasks:
            if rng.random() < CANCEL_SHARE:
                loop.call_later(rng.uniform(0, CANCEL_WITHIN_S), task.cancel)
        started = loop.time()
        async with asyncio.timeout(STORM_DEADLINE_S):
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            await alice.drain()
            await bob.drain()

        errors = [o for o in outcomes if isinstance(o, BaseException)
                  and not isinstance(o, asyncio.CancelledError)]
        assert errors == []  # no HttpError / LocalProtocolError from a half-used connection
        cancelled = sum(isinstance(o, asyncio.CancelledError) for o in outcomes)
        assert cancelled >= 1

        enc_got: list[QkdKey] = []
        dec_got: list[QkdKey] = []
        kept_enc = alice.reserve.enc_count(SAE_B)
        kept_dec = bob.reserve.dec_count()
        for (kind, arg, _), outcome in zip(calls, outcomes, strict=True):
            if kind == "status":
                assert isinstance(outcome, KeyStatus | asyncio.CancelledError)
            elif kind == "enc" and isinstance(outcome, list):
                assert len(outcome) == arg
                enc_got += outcome
            elif kind == "dec":
                if isinstance(outcome, asyncio.CancelledError):
                    outcome = await bob.get_dec_keys(SAE_A, arg)  # the caller's retry
                assert [k.key_ID for k in outcome] == arg
                dec_got += outcome
        # Keys kept from cancelled enc_keys go to the next callers, without a request.
        if kept_enc:
            enc_got += await alice.get_enc_keys(SAE_B, number=kept_enc)
        assert alice.reserve.enc_count(SAE_B) == bob.reserve.dec_count() == 0

        enc_ids = Counter(k.key_ID for k in enc_got)
        assert max(enc_ids.values()) == 1  # no key handed out twice
        assert enc_ids == delivered(kmes, KME_A, SAE_A) - enc_before
        dec_ids = Counter(k.key_ID for k in dec_got)
        assert dec_ids == Counter(list(material)) == delivered(kmes, KME_B, SAE_B) - dec_before
        assert all(k.key == material[k.key_ID] for k in dec_got)
        print(f"storm {loop.time() - started:.3f}s; cancelled {cancelled} of {OPERATIONS}; "
              f"answers kept for later: {kept_enc} enc_keys key(s), {kept_dec} dec_keys key(s)")
