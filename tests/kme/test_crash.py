"""kill -9 of a KME process while SAEs fetch keys over HTTPS: nothing lost, nothing twice."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from keysource.kme.client import KmeError, KmeUnavailable
from keysource.kme.pool import KeyPool
from keysource.kme.runtime import KME_A, KME_B, SAE_A, SAE_B, pool_path

from .conftest import start_pair

CLIENTS = 3
PER_REQUEST = 2


@pytest.mark.slow
def test_kill_9_of_a_serving_kme_loses_no_key_and_serves_none_twice(tmp_path: Path) -> None:
    pair = start_pair(tmp_path)
    batch = pair.fill(1200)
    original = {k for k, _ in batch}
    material = dict(batch)
    received: dict[str, bytes] = {}
    duplicates: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def fetch_loop() -> None:
        with pair.alice() as alice:
            for _ in range(2000):  # bounded; the kill ends it long before
                if stop.is_set():
                    return
                try:
                    keys = alice.get_enc_keys(SAE_B, number=PER_REQUEST)
                except KmeError:
                    return  # the KME died under us
                with lock:
                    for k in keys:
                        if k.key_ID in received:
                            duplicates.append(k.key_ID)
                        received[k.key_ID] = k.key

    threads = [threading.Thread(target=fetch_loop) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(received) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    pair.process.stop(signal.SIGKILL)  # mid-flight: requests are being served
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(received) >= 60 and not duplicates
    assert all(material[k] == v for k, v in received.items())

    with KeyPool(pool_path(tmp_path, KME_A)) as a:
        remaining, journal = a.key_ids(), a.delivered_ids()
    got = set(received)
    assert not got & remaining, "a key the master received is still in KME A's pool"
    assert got <= journal
    assert remaining | journal == original and not remaining & journal
    in_flight = journal - got  # committed, but the answer never reached the client
    assert len(in_flight) <= CLIENTS * PER_REQUEST

    # Restart on the same data: the slave gets every key the master received.
    pair = start_pair(tmp_path)
    try:
        with pair.bob() as bob:
            ids = sorted(got)
            for start in range(0, len(ids), 100):
                chunk = ids[start:start + 100]
                for k in bob.get_dec_keys(SAE_A, chunk):
                    assert received[k.key_ID] == k.key
        # The master drains what is left: nothing it gets now was handed out before.
        after: dict[str, bytes] = {}
        with pair.alice() as alice:
            for number in (100, 1):
                for _ in range(2000):
                    try:
                        keys = alice.get_enc_keys(SAE_B, number=number)
                    except KmeUnavailable:
                        break
                    after.update((k.key_ID, k.key) for k in keys)
        assert not set(after) & got and not set(after) & in_flight
        assert set(after) | got | in_flight == original
    finally:
        pair.process.stop()
    with KeyPool(pool_path(tmp_path, KME_A)) as a, KeyPool(pool_path(tmp_path, KME_B)) as b:
        assert a.key_ids() == set()
        # B still holds, bound to bob, only the in-flight keys and what was drained after.
        assert b.key_ids() == in_flight | set(after)
