"""The path of each key (issue 16, item 4): real nodes name the KMEs a key went through in
the ETSI GS QKD 014 ``key_extension`` of enc_keys and of dec_keys, for a pair on one node,
neighbours and a pair two hops apart; a client that ignores the extension still works."""

from __future__ import annotations

import base64
import logging
import sqlite3
import time
from pathlib import Path

import pytest

from keysource.kme.client import QkdKey, parse_keys
from keysource.kme.key_path import PATH_EXTENSION
from keysource.kme.pool import PoolKey
from keysource.kme.relay_store import LocalKeyStore
from tests.kme.conftest import RawHttp

from .conftest import Network


def _raw(chain: Network, node: str, sae: str) -> RawHttp:
    return RawHttp(chain.url(node), chain.pki.client_context(chain.pki.sae(sae)))


def test_every_kind_of_pair_gets_the_path_its_keys_took(chain: Network) -> None:
    chain.fill("x", "m", 300)
    chain.fill("m", "y", 300)
    cases = [("x", "sae-x", "x", "sae-x2", ["x"]),            # one node
             ("x", "sae-x", "m", "sae-m", ["x", "m"]),        # neighbours
             ("x", "sae-x", "y", "sae-y", ["x", "m", "y"]),   # two hops, m trusted
             ("y", "sae-y", "x", "sae-x", ["y", "m", "x"])]   # and the other way
    for master_node, master, slave_node, slave, path in cases:
        with _raw(chain, master_node, master) as http:
            resp = http.post(f"/api/v1/keys/{slave}/enc_keys", json={"number": 2})
        assert resp.status_code == 200, resp.text
        entries = resp.json()["keys"]
        assert [e["key_extension"] for e in entries] == [{PATH_EXTENSION: path}] * 2
        with chain.client(slave_node, slave) as client:
            got = client.get_dec_keys(master, [e["key_ID"] for e in entries])
        assert [k.key for k in got] == [base64.b64decode(e["key"]) for e in entries]
        assert [k.path for k in got] == [tuple(path)] * 2, (master, slave)
    # The blocking client reads it on enc_keys too.
    with chain.client("x", "sae-x") as x:
        assert [k.path for k in x.get_enc_keys("sae-y", 1)] == [("x", "m", "y")]


def test_a_key_without_or_with_a_bad_path_is_still_a_key(
        caplog: pytest.LogCaptureFixture) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    plain = parse_keys({"keys": [{"key_ID": "a", "key": key}]})
    assert plain == [QkdKey("a", b"k" * 32)] and plain[0].path == ()
    other = parse_keys({"keys": [{"key_ID": "a", "key": key, "key_extension": {"x": 1}}]})
    assert other[0].path == ()
    with caplog.at_level(logging.WARNING, logger="keysource.kme.client"):
        for bad in ({PATH_EXTENSION: "x"}, {PATH_EXTENSION: []}, {PATH_EXTENSION: ["a b"]},
                    {PATH_EXTENSION: ["n"] * 65}, "not an object"):
            got = parse_keys({"keys": [{"key_ID": "a", "key": key, "key_extension": bad}]})
            assert got == [QkdKey("a", b"k" * 32)] and got[0].path == (), bad
    assert caplog.text.count("path ignored") == 5


def test_the_node_store_keeps_each_keys_path_and_opens_an_older_store(tmp_path: Path) -> None:
    db = tmp_path / "own.sqlite"
    with sqlite3.connect(db) as old:  # a store made before keys named their path
        old.execute("CREATE TABLE local_keys (key_id TEXT PRIMARY KEY, master_sae TEXT NOT "
                    "NULL, slave_sae TEXT NOT NULL, material BLOB, created REAL NOT NULL, "
                    "delivered REAL)")
        old.execute("INSERT INTO local_keys VALUES ('00000000-0000-0000-0000-000000000001', "
                    "'sae-a', 'sae-b', ?, ?, NULL)", (b"o" * 32, time.time()))
    store = LocalKeyStore(db, redelivery_grace_s=60, ttl_s=300)
    try:
        store.put("sae-a", "sae-b", [PoolKey("00000000-0000-0000-0000-000000000002",
                                             b"n" * 32, ("x", "m", "y"))])
        got = store.take_for_slave("sae-a", "sae-b", ["00000000-0000-0000-0000-000000000001",
                                                      "00000000-0000-0000-0000-000000000002"])
    finally:
        store.close()
    assert [(k.key, k.path) for k in got] == [(b"o" * 32, ()), (b"n" * 32, ("x", "m", "y"))]
