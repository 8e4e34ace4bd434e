"""A group file with real processes: relay, KME pair and ``qsecret`` commands on loopback.

alice sends one file to a group of three; bob and carol receive while dave is offline
until the relay holds half of the upload. All three end with the file, byte for byte; the
relay's counters show each chunk was uploaded once and spooled once per member.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

from client.transfer.manifest import DEFAULT_CHUNK_SIZE
from tests.e2e.stack import Stack
from tests.e2e.test_file_transfer import Cli, MiB, _metric, _sha, _write
from tests.network.conftest import stop_network, users_on_two_nodes

pytestmark = pytest.mark.slow

MEMBERS = ("bob", "carol", "dave")
UPLOADS = "qsecret_relay_group_file_uploads_total"
# Two QKD nodes joined by a link: alice on one, the members on the other, so each pairwise
# session (which carries the group's keys and the file's offer) gets QKD keys.
AT = {"alice": "x", "bob": "y", "carol": "y", "dave": "y"}
NODES = {"x": ["sae-alice"], "y": ["sae-bob", "sae-carol", "sae-dave"]}


@pytest.fixture(scope="module")
def crew(tmp_path_factory: pytest.TempPathFactory, pq_backend: str) -> Iterator[Stack]:
    stack, network = users_on_two_nodes(tmp_path_factory.mktemp("gfiles"), AT, NODES)
    try:
        for handle in MEMBERS:
            stack.cli(handle, "recv", check=True)  # prekeys on the relay
        stack.cli("alice", "group", "create", "team", *MEMBERS, check=True)
        for handle in MEMBERS:  # the group's log and alice's sender key
            out = stack.cli(handle, "recv", "--json", check=True).stdout
            assert '"group": "team"' in out, (handle, out)
        yield stack
    finally:
        stack.stop()
        stop_network(network)


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
