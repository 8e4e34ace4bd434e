"""Bad input: every kind gets its documented reaction, and the relay keeps serving others.

One relay process for the module. A witness pair (alice -> bob) exchanges
envelopes the whole time; at the end every one of them must have arrived and
the relay must still be alive and healthy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection as Ws
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from relay import wire
from tests.relay.harness import Client, Identity, RelayProcess, start_relay

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    process = start_relay(tmp_path_factory.mktemp("bad") / "relay", "--auth-timeout", "3")
    yield process
    process.stop()


# ---------------------------------------------------------------- raw peers


@dataclass
class Peer:
    ws: Ws
    hello: wire.Hello
    identity: Identity | None = None


async def open_peer(relay: RelayProcess, identity: Identity | None = None) -> Peer:
    ws = await connect(relay.url, compression=None, max_size=wire.MAX_FRAME_BYTES)
    hello = wire.parse_server_frame(await ws.recv())
    assert isinstance(hello, wire.Hello)
    peer = Peer(ws, hello, identity)
    if identity is not None:
        await ws.send(auth_frame(relay, hello.nonce, identity))
        reply = await next_frame(ws)
        assert isinstance(reply, wire.AuthOk), reply
    return peer


def auth_frame(relay: RelayProcess, nonce: bytes, identity: Identity, **override: Any) -> str:
    message = wire.auth_message(nonce, relay.relay_id, b"", identity.handle,
                                identity.keypair.public_key)
    frame = wire.Auth(identity.handle, identity.keypair.public_key, relay.relay_id,
                      identity.sign(message)).to_json()
    frame.update(override)
    return json.dumps(frame)


async def next_frame(ws: Ws, timeout: float = 5.0) -> wire.Frame:
    """The next control frame, skipping the fresh ``hello`` sent after a failed login."""
    while True:
        data = await asyncio.wait_for(ws.recv(), timeout)
        frame = wire.parse_server_frame(data)
        if not isinstance(frame, wire.Hello):
            return frame


async def expect_error(ws: Ws, code: str) -> wire.Error:
    frame = await next_frame(ws)
    assert isinstance(frame, wire.Error), frame
    assert frame.code == code, (frame.code, frame.message)
    assert code in wire.ERROR_CODES  # documented
    return frame


async def expect_alive(peer: Peer) -> None:
    """The connection still answers: pong when logged in, not_authenticated before."""
    await peer.ws.send(wire.Ping("alive").encode())
    frame = await next_frame(peer.ws)
    if peer.identity is not None:
        assert isinstance(frame, wire.Pong) and frame.id == "alive", frame
    else:
        assert isinstance(frame, wire.Error) and frame.code == "not_authenticated", frame


async def expect_close(ws: Ws, code: int, timeout: float = 10.0) -> None:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    assert ws.close_code == code, (ws.close_code, ws.close_reason)


def js(**fields: Any) -> str:
    return json.dumps({"v": 1, **fields})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


MSG = "0" * 32
STREAM = bytes(range(16))


def binary(**over: Any) -> bytes:
    frame = wire.encode_binary(wire.KIND_FILE_CHUNK, STREAM, 0, b"chunk")
    if "version" in over:
        frame = bytes([over["version"]]) + frame[1:]
    if "length" in over:
        frame = frame[:28] + over["length"].to_bytes(4, "big") + frame[32:]
    return frame


# ---------------------------------------------------------------- the witness


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def witness(relay: RelayProcess) -> AsyncIterator[Callable[[], Any]]:
    """alice sends bob an envelope every 20 ms while the bad input flies."""
    alice = await Client(relay.url, Identity("w-alice")).connect()
    bob = await Client(relay.url, Identity("w-bob")).connect()
    stop = asyncio.Event()
    sent: list[str] = []

    async def pump() -> None:
        while not stop.is_set() and len(sent) < 5000:
            sent.append(await alice.send("w-bob", os.urandom(64)))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(pump())

    async def finish() -> tuple[list[str], Client, Client]:
        stop.set()
        await task
        return sent, alice, bob

    yield finish
    if not task.done():
        stop.set()
        await task
    await alice.close()
    await bob.close()


# ---------------------------------------------------------------- cases


PRE_AUTH_ERRORS: dict[str, tuple[str | bytes, str]] = {
    "not json": ("hello relay", "bad_json"),
    "json array": ("[1, 2, 3]", "bad_json"),
    "json string": ('"auth"', "bad_json"),
    "deeply nested json": ("[" * 100_000 + "]" * 100_000, "bad_json"),
    "missing version": ('{"t": "ping"}', "bad_version"),
    "unknown version": ('{"v": 2, "t": "ping"}', "bad_version"),
    "version as string": ('{"v": "1", "t": "ping"}', "bad_version"),
    "version as bool": ('{"v": true, "t": "ping"}', "bad_version"),
    "version NaN": ('{"v": NaN, "t": "ping"}', "bad_version"),
    "missing type": ('{"v": 1}', "unknown_type"),
    "unknown type": (js(t="steal_queue", handle="bob"), "unknown_type"),
    "relay-only frame from a client": (js(t="deliver", seq=1, msg=MSG, **{"from": "a"},
                                          body="AA==", ts=1), "unknown_type"),
    "send before login": (js(t="send", msg=MSG, to="bob", body="AA=="), "not_authenticated"),
    "ack before login": (js(t="ack", seqs=[1, 2, 3]), "not_authenticated"),
    "binary before login": (binary(), "not_authenticated"),
    "auth missing fields": (js(t="auth", handle="eve"), "missing_field"),
    "auth bad handle": (js(t="auth", handle="Eve!", identity="", relay="x", sig=""),
                        "bad_field"),
    "auth identity wrong size": (js(t="auth", handle="eve", identity=b64(b"k" * 10), relay="x",
                                    sig=b64(b"s" * wire.HYBRID_SIGNATURE_BYTES)), "bad_field"),
    "auth truncated signature": (js(t="auth", handle="eve",
                                    identity=b64(b"k" * wire.HYBRID_PUBLIC_KEY_BYTES),
                                    relay="x", sig=b64(b"s" * 100)), "bad_field"),
    "auth signature not base64": (js(t="auth", handle="eve",
                                     identity=b64(b"k" * wire.HYBRID_PUBLIC_KEY_BYTES),
                                     relay="x", sig="!!not base64!!"), "bad_field"),
}


@pytest.mark.parametrize("case", sorted(PRE_AUTH_ERRORS))
async def test_pre_auth_bad_frames(relay: RelayProcess, witness: Any, case: str) -> None:
    payload, code = PRE_AUTH_ERRORS[case]
    peer = await open_peer(relay)
    await peer.ws.send(payload)
    await expect_error(peer.ws, code)
    await expect_alive(peer)
    await peer.ws.close()


async def test_auth_extra_field(relay: RelayProcess) -> None:
    peer = await open_peer(relay)
    await peer.ws.send(auth_frame(relay, peer.hello.nonce, Identity("eve"), admin=True))
    error = await expect_error(peer.ws, "bad_field")
    assert "admin" in error.message
    await expect_alive(peer)


async def test_auth_bad_signature(relay: RelayProcess) -> None:
    peer = await open_peer(relay)
    eve = Identity("eve-sig")
    forged = b64(os.urandom(wire.HYBRID_SIGNATURE_BYTES))
    await peer.ws.send(auth_frame(relay, peer.hello.nonce, eve, sig=forged))
    await expect_error(peer.ws, "auth_failed")
    await expect_alive(peer)


async def test_auth_replayed_from_another_connection(relay: RelayProcess) -> None:
    victim = Identity("replay-victim")
    first = await open_peer(relay, victim)
    second = await open_peer(relay)
    # An answer signed for the first connection's nonce, replayed on the second.
    await second.ws.send(auth_frame(relay, first.hello.nonce, victim))
    await expect_error(second.ws, "auth_failed")
    # And the same answer replayed on its own connection after use: nonce is spent.
    third = await open_peer(relay)
    answer = auth_frame(relay, third.hello.nonce, Identity("replay-2"))
    await third.ws.send(answer)
    assert isinstance(await next_frame(third.ws), wire.AuthOk)
    await third.ws.send(answer)
    await expect_error(third.ws, "already_authenticated")
    for peer in (first, second, third):
        await peer.ws.close()


async def test_auth_wrong_relay_id(relay: RelayProcess) -> None:
    peer = await open_peer(relay)
    eve = Identity("eve-relay")
    message = wire.auth_message(peer.hello.nonce, "qsr-other", b"", eve.handle,
                                eve.keypair.public_key)
    frame = wire.Auth(eve.handle, eve.keypair.public_key, "qsr-other", eve.sign(message))
    await peer.ws.send(frame.encode())
    await expect_error(peer.ws, "wrong_relay")
    await expect_alive(peer)


async def test_three_failed_logins_close_1008(relay: RelayProcess) -> None:
    peer = await open_peer(relay)
    for _ in range(3):
        await peer.ws.send(auth_frame(relay, os.urandom(32), Identity("eve-3")))
    await expect_close(peer.ws, wire.CLOSE_POLICY)


async def test_auth_timeout_closes_1008(relay: RelayProcess) -> None:
    peer = await open_peer(relay)
    await expect_close(peer.ws, wire.CLOSE_POLICY, timeout=10)


@pytest_asyncio.fixture(loop_scope="module")
async def authed(relay: RelayProcess) -> AsyncIterator[Peer]:
    peer = await open_peer(relay, Identity(f"u{os.urandom(4).hex()}"))
    yield peer
    await peer.ws.close()


def _prekey_upload(identity: Identity, *, sign_as: Identity | None = None,
                   tamper: bool = False) -> str:
    signer = sign_as or identity
    bundle = wire.sign_bundle(identity.handle, signer.keypair.public_key, b"signed-part",
                              [(1, b"otk-1")], signer.sign)
    if tamper:
        bundle = wire.PrekeyBundle(bundle.identity, b"changed-after-signing", bundle.signed_sig,
                                   bundle.one_time)
    return wire.PrekeysUpload(bundle, "up").encode()


AUTHED_ERRORS: dict[str, tuple[Callable[[Peer], str | bytes], str]] = {
    "auth with empty fields after login": (
        lambda p: js(t="auth", handle="x", identity="", relay="x", sig=""), "bad_field"),
    "send body is a number": (lambda p: js(t="send", msg=MSG, to="w-bob", body=123),
                              "bad_field"),
    "send body over 64 KiB": (lambda p: js(t="send", msg=MSG, to="w-bob",
                                           body=b64(b"x" * (wire.MAX_ENVELOPE_BYTES + 1))),
                              "too_large"),
    "send empty body": (lambda p: js(t="send", msg=MSG, to="w-bob", body=""), "bad_field"),
    "send bad message id": (lambda p: js(t="send", msg="XYZ", to="w-bob", body="AA=="),
                            "bad_field"),
    "send missing recipient": (lambda p: js(t="send", msg=MSG, body="AA=="), "missing_field"),
    "send to nobody": (lambda p: js(t="send", msg=os.urandom(16).hex(), to="nobody-here",
                                    body="AA=="), "unknown_recipient"),
    "ack not a list": (lambda p: js(t="ack", seqs="1,2"), "bad_field"),
    "ack negative seq": (lambda p: js(t="ack", seqs=[-1]), "bad_field"),
    "ack bool seq": (lambda p: js(t="ack", seqs=[True]), "bad_field"),
    "ack float seq": (lambda p: js(t="ack", seqs=[1.5]), "bad_field"),
    "ack too many seqs": (lambda p: js(t="ack", seqs=list(range(wire.MAX_ACK_SEQS + 1))),
                          "bad_field"),
    "binary shorter than header": (lambda p: b"\x01\x01\x00", "bad_binary_frame"),
    "binary length mismatch": (lambda p: binary(length=999), "bad_binary_frame"),
    "binary unknown version": (lambda p: binary(version=9), "bad_binary_frame"),
    "binary unknown stream": (lambda p: binary(), "unknown_stream"),
    "close unknown stream": (lambda p: js(t="stream_close", stream=STREAM.hex()),
                             "unknown_stream"),
    "media stream to offline user": (lambda p: js(t="stream_open", stream=STREAM.hex(),
                                                  to="nobody", kind="media"),
                                     "recipient_offline"),
    "file stream to unknown user": (lambda p: js(t="stream_open", stream=STREAM.hex(),
                                                 to="nobody", kind="file"), "unknown_recipient"),
    "file stream to oneself": (lambda p: js(t="stream_open", stream=STREAM.hex(),
                                            to=p.identity.handle, kind="file"), "bad_field"),
    "stream_ack for an unknown stream": (lambda p: js(t="stream_ack", stream=STREAM.hex(),
                                                      seqs=[1]), "unknown_stream"),
    "stream_ack too many seqs": (lambda p: js(t="stream_ack", stream=STREAM.hex(),
                                              seqs=list(range(wire.MAX_ACK_SEQS + 1))),
                                 "bad_field"),
    "stream of unknown kind": (lambda p: js(t="stream_open", stream=STREAM.hex(), to="w-bob",
                                            kind="video"), "bad_field"),
    "prekeys signed by another key": (
        lambda p: _prekey_upload(p.identity, sign_as=Identity("other")), "bad_prekeys"),
    "prekeys tampered after signing": (lambda p: _prekey_upload(p.identity, tamper=True),
                                       "bad_prekeys"),
    "prekeys fetch for unknown handle": (lambda p: js(t="prekeys_fetch", handle="nobody"),
                                         "no_bundle"),
    "prekeys one-time list not a list": (
        lambda p: js(t="prekeys_upload", bundle={"identity": "", "signed": "", "signed_sig": "",
                                                 "one_time": {}}), "bad_field"),
}


@pytest.mark.parametrize("case", sorted(AUTHED_ERRORS))
async def test_authenticated_bad_frames(authed: Peer, witness: Any, case: str) -> None:
    make, code = AUTHED_ERRORS[case]
    await authed.ws.send(make(authed))
    await expect_error(authed.ws, code)
    await expect_alive(authed)


async def test_already_authenticated(relay: RelayProcess, authed: Peer) -> None:
    assert authed.identity is not None
    await authed.ws.send(auth_frame(relay, authed.hello.nonce, authed.identity))
    await expect_error(authed.ws, "already_authenticated")
    await expect_alive(authed)


async def test_request_id_is_echoed(authed: Peer) -> None:
    await authed.ws.send(js(t="send", id="req-7", msg="bad", to="w-bob", body="AA=="))
    error = await expect_error(authed.ws, "bad_field")
    assert error.id == "req-7"


async def test_oversized_frame_closes_1009(authed: Peer) -> None:
    await authed.ws.send("x" * (wire.MAX_FRAME_BYTES + 1))
    await expect_close(authed.ws, wire.CLOSE_TOO_BIG)


async def test_invalid_utf8_text_closes_1007(authed: Peer) -> None:
    await authed.ws.send(b'{"v":1,"t":"ping","id":"\xff\xfe"}', text=True)
    await expect_close(authed.ws, wire.CLOSE_BAD_UTF8)


async def test_flood_is_throttled_not_dropped(authed: Peer, witness: Any) -> None:
    """1,500 pings at once: the first ``burst`` (1,000) pass, the rest at ``rate`` (500/s)."""
    flood = 1_500
    start = time.monotonic()
    for i in range(flood):
        await authed.ws.send(wire.Ping(f"p{i}").encode())
    ids = []
    while len(ids) < flood:
        frame = wire.parse_server_frame(await asyncio.wait_for(authed.ws.recv(), 10))
        assert isinstance(frame, wire.Pong), frame
        ids.append(frame.id)
    elapsed = time.monotonic() - start
    assert ids == [f"p{i}" for i in range(flood)]  # nothing dropped, order kept
    # (flood - burst) / rate = 1.0 s at least; 0.9 leaves room for the bucket's
    # refill during the first burst, which is what lets those frames through early.
    assert elapsed >= 0.9, elapsed
    await expect_alive(authed)


async def test_repeated_bad_frames_close_1008(authed: Peer) -> None:
    codes = []
    with pytest.raises(ConnectionClosed):
        for _ in range(100):  # bounded; abuse_limit is 16
            await authed.ws.send("garbage")
            frame = wire.parse_server_frame(await asyncio.wait_for(authed.ws.recv(), 5))
            assert isinstance(frame, wire.Error)
            codes.append(frame.code)
    assert authed.ws.close_code == wire.CLOSE_POLICY
    assert 1 <= len(codes) <= 16 and set(codes) == {"bad_json"}


async def test_http_side_refusals(relay: RelayProcess) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(relay.http_url + "/admin", timeout=5)
    assert info.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(relay.http_url + "/", timeout=5)  # not a websocket upgrade
    assert info.value.code == 426


async def test_zz_relay_served_the_witness_throughout(relay: RelayProcess, witness: Any) -> None:
    """Runs last in the module: the witness pair lost nothing, the relay is alive."""
    sent, alice, bob = await witness()
    assert len(sent) > 10
    await bob.wait(lambda: {d.msg for d in bob.delivered} >= set(sent), timeout=15)
    await alice.wait(lambda: set(alice.stored) >= set(sent), timeout=15)
    assert relay.alive()
    with urllib.request.urlopen(relay.http_url + "/healthz", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{relay.metrics_url}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'qsecret_relay_closed_total{code="1008"}' in metrics
    assert "Traceback" not in "".join(relay.output)


async def test_documented_codes_cover_the_suite() -> None:
    used = {code for _, code in PRE_AUTH_ERRORS.values()} | {
        code for _, code in AUTHED_ERRORS.values()}
    assert used <= set(wire.ERROR_CODES)
    assert len(PRE_AUTH_ERRORS) + len(AUTHED_ERRORS) >= 25

