"""A group file with real processes: relay, KME pair and ``qsecret`` commands on loopback.

alice sends one file to a group of three; bob and carol receive while dave is offline
until the relay holds half of the upload. All three end with the file, byte for byte; the
relay's counters show each chunk was uploaded once and spooled once per member.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Callable, Iterator

import pytest

from client.config import load_config
from client.messenger import payload
from client.messenger.api import ConversationId
from client.messenger.profile import open_profile
from client.transfer import build_manifest, encode_group_offer
from client.transfer.manifest import DEFAULT_CHUNK_SIZE
from relay.wire import parse_binary
from tests.e2e.stack import PASSPHRASE, Stack
from tests.e2e.test_file_transfer import Cli, MiB, _metric, _sha, _write
from tests.network.conftest import logged_in_on_two_nodes

pytestmark = pytest.mark.slow

MEMBERS = ("bob", "carol", "dave")
UPLOADS = "qsecret_relay_group_file_uploads_total"
# Two QKD nodes joined by a link: alice on one, the members on the other, so each pairwise
# session (which carries the group's keys and the file's offer) gets QKD keys.
AT = {"alice": "x", "eve": "x", "bob": "y", "carol": "y", "dave": "y"}
NODES = {"x": ["sae-alice", "sae-eve"], "y": ["sae-bob", "sae-carol", "sae-dave"]}


@pytest.fixture(scope="module")
def crew(tmp_path_factory: pytest.TempPathFactory, pq_backend: str) -> Iterator[Stack]:
    with logged_in_on_two_nodes(tmp_path_factory.mktemp("gfiles"), AT, NODES) as stack:
        stack.cli("alice", "group", "create", "team", *MEMBERS, check=True)
        for handle in MEMBERS:  # the group's log and alice's sender key
            out = stack.cli(handle, "recv", "--json", check=True).stdout
            assert '"group": "team"' in out, (handle, out)
        yield stack


def _receive(stack: Stack, handle: str) -> Cli:
    return Cli(stack, handle, "receive-files", "--accept", "all", "--downloads",
               str(stack.root / f"dl-{handle}"), "--json", "--idle", "120", "--count", "1",
               name=f"{handle}-receive").start()


def _fanout(stack: Stack) -> float:
    return _metric(stack, 'qsecret_relay_file_frames_total{path="fanout"}')


def test_a_group_file_to_three_members_one_offline_until_halfway(crew: Stack) -> None:
    source = _write(crew.root / "src" / "slides.bin", 12 * MiB + 5)
    chunks = math.ceil(source.stat().st_size / DEFAULT_CHUNK_SIZE)
    frames = chunks + 1  # and the sealed "uploaded" record
    receivers = [_receive(crew, handle) for handle in ("bob", "carol")]
    sender = Cli(crew, "alice", "send-file", "@team", str(source), "--json",
                 "--limit-rate", "3MB").start()
    try:
        deadline = time.monotonic() + 90
        while _metric(crew, UPLOADS) < chunks // 2:  # dave is offline until halfway
            assert time.monotonic() < deadline, "the upload did not reach halfway"
            assert sender.running, sender._tail()
            time.sleep(0.2)
        assert _metric(crew, UPLOADS) < frames, "dave must come back before the upload ends"
        receivers.append(_receive(crew, "dave"))
        for receiver in receivers:
            assert receiver.exit_code(180) == 0, receiver._tail()
        assert sender.exit_code(60) == 0, sender._tail()
        done = [e for e in sender.events() if e.get("event") == "complete"]
        assert done, sender._tail()
    finally:
        for process in (sender, *receivers):
            process.stop()
    expected = _sha(source)
    for handle in MEMBERS:
        assert _sha(crew.root / f"dl-{handle}" / "slides.bin") == expected, handle
        assert not list((crew.root / f"dl-{handle}").glob("*.part")), handle
    assert _metric(crew, UPLOADS) == frames  # uploaded once...
    assert _fanout(crew) == len(MEMBERS) * frames  # ...one spooled copy per member


async def _offer_as(stack: Stack, handle: str, to: str, group_id: str, path: str) -> None:
    """``handle`` (not a member) offers a group file for ``group_id`` to ``to``: the offer
    its own qsecret would never make, sealed in a genuine pairwise session."""
    messenger = open_profile(load_config(stack.profile(handle), relay_url=stack.relay_url),
                             PASSPHRASE)
    await messenger.start()
    try:
        await messenger.wait_online(30)
        conversation = ConversationId.direct(to)
        await messenger.ensure_session(conversation)
        manifest = build_manifest([path]).manifest
        offer = encode_group_offer(manifest, bytes.fromhex(group_id), "team")
        await messenger.send_transfer_message(
            conversation, payload.transfer(offer, os.urandom(32)), wait=True)
    finally:
        await messenger.stop()


def test_a_group_file_from_a_non_member_is_refused_with_the_reason(crew: Stack) -> None:
    groups = json.loads(crew.cli("bob", "group", "list", "--json", check=True).stdout)
    group_id = next(g["id"] for g in groups if g["name"] == "team")
    source = _write(crew.root / "src-eve" / "invoice.bin", 1000)
    asyncio.run(_offer_as(crew, "eve", "bob", group_id, str(source)))
    out = crew.cli("bob", "recv", "--json", check=True).stdout
    shown = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert {"event": "file", "group": "team", "from": "eve", "state": "failed",
            "detail": "refused: eve is not a member of team"}.items() <= next(
        e for e in shown if e.get("event") == "file").items(), shown
    downloads = crew.root / "dl-bob-eve"
    crew.cli("bob", "receive-files", "--accept", "all", "--idle", "3", "--downloads",
             str(downloads), "--json")
    out = crew.cli("bob", "transfers", "--json", check=True).stdout
    listed = [json.loads(line) for line in out.splitlines() if line.strip()]
    refused = [t for t in listed if t["peer"] == "eve"]
    assert len(refused) == 1, listed
    assert refused[0]["state"] == "failed"
    assert refused[0]["detail"] == "refused: eve is not a member of team"
    assert not downloads.exists() or not any(downloads.iterdir())


async def _send_hostile(stack: Stack, source: str, spoil: Callable[[int, bytes], bytes | None],
                        ) -> str:
    """alice sends ``source`` to @team from this process, each chunk frame going through
    ``spoil(seq, payload)`` (the wire as someone in the relay's position would shape it;
    None: dropped); returns how her side ended."""
    messenger = open_profile(load_config(stack.profile("alice"), relay_url=stack.relay_url),
                             PASSPHRASE)
    await messenger.start()
    genuine = messenger.relay.send_binary

    async def send_frame(frame: bytes | bytearray, headroom: int = 0) -> None:
        parsed = parse_binary(bytes(frame[headroom:]))
        payload = spoil(parsed.seq, bytes(parsed.payload))
        if payload is not None:
            await genuine(parsed.kind, parsed.stream, parsed.seq, payload)

    messenger.relay.send_frame = send_frame  # type: ignore[method-assign]
    try:
        await messenger.wait_online(30)
        view = await messenger.send_files("@team", [source])
        deadline = asyncio.get_running_loop().time() + 60
        while not (state := next(v.state for v in messenger.transfers()
                                 if v.transfer_id == view.transfer_id)).finished:
            assert asyncio.get_running_loop().time() < deadline, "the upload did not end"
            await asyncio.sleep(0.1)
        return state.value
    finally:
        await messenger.stop()


@pytest.mark.parametrize(("case", "reason"), [
    ("tampered", "failed authentication"),
    ("truncated", "truncated: the sender's upload ended"),
])
def test_a_tampered_or_truncated_group_file_fails_each_copy_and_keeps_nothing(
        crew: Stack, case: str, reason: str) -> None:
    source = _write(crew.root / f"src-{case}" / f"{case}.bin", 3 * MiB + 99)
    last = math.ceil(source.stat().st_size / DEFAULT_CHUNK_SIZE) - 1

    def spoil(seq: int, payload: bytes) -> bytes | None:
        if case == "tampered" and seq == 1:
            flipped = bytearray(payload)
            flipped[len(flipped) // 2] ^= 0x01
            return bytes(flipped)
        if case == "truncated" and seq == last:
            return None  # the last chunk never reaches the relay; the end record does
        return payload

    assert asyncio.run(_send_hostile(crew, str(source), spoil)) == "complete"
    for member in ("bob", "carol"):
        downloads = crew.root / f"dl-{case}-{member}"
        # --count 1 counts completed transfers: it exits (1) after --idle with none.
        result = crew.cli(member, "receive-files", "--accept", "all", "--count", "1",
                          "--idle", "8", "--downloads", str(downloads), "--json")
        events = [json.loads(line) for line in result.stdout.splitlines()
                  if line.startswith("{")]
        failed = [e for e in events if e.get("event") == "failed"]
        assert result.returncode == 1 and failed, (member, result.stdout, result.stderr)
        assert reason in failed[-1]["detail"], failed[-1]
        assert not [p for p in downloads.rglob("*")
                    if p.is_file() and ".qsecret-partial" not in p.parts], member
