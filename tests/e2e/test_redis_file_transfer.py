"""``qsecret send-file`` between users on two relays over one Redis (issue 19), as real
processes: redis-server (strict), two ``qsecret relay --store redis://…``, the KME pair, and
the CLI of alice (on relay A) and bob (on relay B)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.processes import ServiceProcess
from tests.e2e.stack import KEYS_BEFORE_USE, PASSPHRASE, Stack, free_port
from tests.e2e.test_file_transfer import Cli, MiB, _complete, _sha, _tree_hashes, _write
from tests.relay.redis_server import RedisServer

pytestmark = pytest.mark.slow


class TwoRelays(Stack):
    """The e2e stack with its relay on Redis, plus relay B on the same Redis."""

    redis: RedisServer
    relay_b: ServiceProcess | None = None
    relay_b_port: int = 0
    metrics_b_port: int = 0

    @property
    def relay_b_url(self) -> str:
        return f"ws://127.0.0.1:{self.relay_b_port}"

    def start_relay_b(self) -> None:
        self.relay_b = ServiceProcess(
            "relay-b",
            ["relay", "--port", str(self.relay_b_port), "--data", str(self.root / "relay-b"),
             "--redeliver-after", "2", "--store", self.redis.url,
             "--metrics-listen", f"127.0.0.1:{self.metrics_b_port}"],
            log=self.root / "relay-b.log",
        ).start()
        self.relay_b.wait_for("relay listening")

    def stop(self) -> None:
        if self.relay_b is not None:
            self.relay_b.stop()
        super().stop()
        self.redis.stop()


class CliOn(Cli):
    """A user's long-running command, connected to the relay at ``relay_url``."""

    def __init__(self, stack: TwoRelays, handle: str, relay_url: str, *args: str) -> None:
        ServiceProcess.__init__(
            self, f"{handle}-{args[0]}",
            [*args, "--data", str(stack.profile(handle)), "--relay", relay_url],
            log=stack.root / f"{handle}-{args[0]}-{time.monotonic_ns()}.log",
            env={"QSECRET_PASSPHRASE": PASSPHRASE, "QSECRET_LOG": "warning"})


def start_two_relays(root: Path) -> TwoRelays:
    """Redis (strict), relays A and B on it, the KME pair, alice and bob; bob logged in once
    (his prekeys are on relay A, so in Redis for both)."""
    redis = RedisServer(root / "redis").start()
    stack = TwoRelays(root, keys_before_use=KEYS_BEFORE_USE)
    stack.redis = redis
    stack.relay_args = ("--store", redis.url)
    stack.relay_b_port, stack.metrics_b_port = free_port(), free_port()
    try:
        stack.start_relay()
        stack.start_relay_b()
        stack.start_kme()
        for handle in ("alice", "bob"):
            stack.init(handle)
        stack.cli("bob", "recv", check=True)
    except BaseException:
        stack.stop()
        raise
    return stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pq_backend: str) -> Iterator[TwoRelays]:
    stack = start_two_relays(tmp_path_factory.mktemp("two-relays"))
    try:
        stack.cli("alice", "contacts", "add", "bob", check=True)
        yield stack
    finally:
        stack.stop()


def _receiver(stack: TwoRelays, downloads: Path, *extra: str) -> CliOn:
    return CliOn(stack, "bob", stack.relay_b_url, "receive-files", "--accept", "all",
                 "--downloads", str(downloads), "--json", "--idle", "120", *extra).start()


def _sender(stack: TwoRelays, *paths: Path, extra: tuple[str, ...] = ()) -> CliOn:
    return CliOn(stack, "alice", stack.relay_url, "send-file", "bob", *map(str, paths),
                 "--json", *extra).start()


def _spooled(stack: TwoRelays) -> float:
    """Bytes spooled, as relay A (which spools alice's chunks into Redis) counts them."""
    url = f"http://127.0.0.1:{stack.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("qsecret_relay_spool_bytes "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError("relay A exports no qsecret_relay_spool_bytes")


def test_a_file_sent_through_relay_a_arrives_through_relay_b(stack: TwoRelays) -> None:
    source = _write(stack.root / "src-live" / "film.bin", 12 * MiB + 321)
    tree = stack.root / "src-live" / "notes"
    _write(tree / "a.txt", 1000)
    _write(tree / "deep" / "b.bin", 300 * 1024 + 1)
    downloads = stack.root / "dl-live"
    receiver = _receiver(stack, downloads, "--count", "1")
    try:
        sender = _sender(stack, source, tree)
        assert sender.exit_code(180) == 0, sender._tail()
        sender.wait_event(_complete, 5, "complete")
        assert receiver.exit_code(60) == 0, receiver._tail()
    finally:
        receiver.stop()
    assert _sha(downloads / "film.bin") == _sha(source)
    assert _tree_hashes(downloads / "notes") == _tree_hashes(tree)
    assert not list(downloads.glob("*.part"))


def test_the_receiver_offline_halfway_gets_the_rest_from_the_redis_spool(
        stack: TwoRelays) -> None:
    folder = stack.root / "src-offline" / "project"
    for index in range(6):
        _write(folder / f"part-{index}.bin", 4 * MiB + index)
    total = sum(p.stat().st_size for p in folder.iterdir())
    downloads = stack.root / "dl-offline"
    receiver = _receiver(stack, downloads)
    sender = _sender(stack, folder, extra=("--limit-rate", "6MB"))
    try:
        receiver.wait_event(lambda e: e.get("done", 0) > total // 4, 90, "a quarter")
        receiver.kill()  # bob goes offline
        got = receiver.done_bytes()
        assert got < total // 2
        # alice, on relay A, keeps going: Redis holds what bob has not taken yet.
        deadline = time.monotonic() + 90
        while _spooled(stack) < (total - got) // 2:
            assert time.monotonic() < deadline, "relay A did not spool the chunks"
            assert sender.running, sender._tail()
            time.sleep(0.5)  # polling another process's counter, with a deadline
        receiver = _receiver(stack, downloads, "--count", "1")  # bob is back, on relay B
        assert receiver.exit_code(180) == 0, receiver._tail()
        assert sender.exit_code(60) == 0, sender._tail()
    finally:
        receiver.stop()
        sender.stop()
    assert _tree_hashes(downloads / "project") == _tree_hashes(folder)
