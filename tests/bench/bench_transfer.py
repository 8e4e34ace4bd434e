"""File-transfer throughput: qsecret end to end beside magic-wormhole and a bare forwarder.

    python tests/bench/bench_transfer.py --quick --json OUT.json      # 256 MiB, 2 rounds
    python tests/bench/bench_transfer.py --json OUT.json              # 1 GiB, 3 rounds
    python tests/bench/bench_transfer.py --core-only --quick --json OUT.json

The default (end-to-end) mode sends one seeded file over loopback three ways, interleaved
round by round, every client and server its own process:

* ``qsecret_mb_per_s``: ``qsecret send-file`` (alice, on KME A) to ``qsecret receive-files
  --accept all`` (bob, on KME B) through a local qsecret relay, with the KME pair and QKD link
  of tests/e2e/stack.py. The receiver is started first and given time to connect and log in;
  the clock runs from starting the sender process (so its start-up, the offer and the
  acceptance round trip are included, as wormhole's handshake is) until the receiver prints
  its ``complete`` event. The landed file is checked byte for byte (SHA-256). The project's
  modules are byte-compiled before the rounds, as ``pip install`` does for a wheel: with
  ``PYTHONDONTWRITEBYTECODE=1`` (set on these machines) an editable install keeps no bytecode,
  so each qsecret process would otherwise compile its 120-odd modules at start (about 80 ms)
  while wormhole, installed from a wheel, loads its cached bytecode. The KME pair
  runs with pools of 2,048 keys and the rounds start once its emulated QKD link has filled
  them and gone idle (``--qkd-link idle``, the default): the link's number crunching stands
  in for QKD hardware, which does not share the host's CPU, and a transfer takes only a few
  keys, not enough to start another block (keysource/qkd/refill.py). ``--qkd-link busy``
  keeps the default 100,000-key pools, so the link computes blocks all through the rounds
  (at low CPU priority) and the figure includes that competition.
* ``wormhole_mb_per_s``: magic-wormhole 0.24 ``wormhole send``/``receive`` with its own
  mailbox server and transit relay (twistd plugins) on loopback, both clients ``--no-listen``
  so the bytes go through the transit relay as qsecret's go through its relay. The clock runs
  from starting ``wormhole send`` until ``wormhole receive`` exits 0; the file is checked
  (SHA-256).
* ``bare_ws_mb_per_s``: the ceiling, tests/bench/bare_ws.py: two websockets clients through a
  minimal forwarder process, the same number of bytes in frames of qsecret's binary payload
  size (256 KiB), no crypto, no disk; the receiver counts the bytes. Same clock.

Also reported: each client's peak RSS (``VmHWM`` of its own address space, polled every 5 ms
until it exits, see _children.py); ``peak_rss_mib`` is qsecret's receiver. ``*_cpu_s``: CPU
seconds (user + system) each process spent on the transfer, clients and servers (the KME pair
with its QKD link included for qsecret), to show where a 2-core machine's time goes. Ratios
``vs_wormhole`` and ``vs_bare`` compare the medians. Targets (reported, not asserted): qsecret
at least twice as fast as wormhole, at least 40 % of the bare forwarder, receiver peak RSS under
200 MiB. A
method that cannot run (e.g. a qsecret command missing or failing) is reported as failed with
its reason and the exit status is 1; the others are still measured.

``--core-only`` measures the sans-I/O transfer core on one machine, no sockets: the sender
reads and seals every chunk, the receiver authenticates, writes the ``.part`` file, hashes,
persists progress per chunk, acks, verifies and lands the file (``core_mb_per_s``). Baselines
in the same run, over the same number of bytes and the same chunk size: a bare AES-256-GCM
encryption pass in memory (``aead_baseline_mb_per_s``, the crypto ceiling) and a plain
read+write copy of the file with no crypto (``copy_baseline_mb_per_s``, the disk ceiling).
Each side's own share is reported too (``sender_mb_per_s``, ``receiver_mb_per_s``). Figures
are medians over rounds; compare the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client.processes import ServiceError
from client.transfer import (
    DEFAULT_CHUNK_SIZE,
    FileReader,
    ReceiverStatus,
    TransferReceiver,
    TransferSender,
    build_manifest,
)
from relay.wire import MAX_BINARY_PAYLOAD
from tests.bench._children import (
    Child,
    ChildError,
    cpu_seconds,
    wait_connected,
    wait_listening,
)
from tests.bench._common import write_json
from tests.e2e.stack import free_port
from tests.transfer.helpers import Secrets, sha256_file, write_seeded_file

MB = 1e6
MiB = 1 << 20
SETTLE_S = 0.5  # after the receiver connects, before the sender starts


def core_round(source: Path, downloads: Path, chunk_size: int,
               window: int) -> dict[str, float]:
    """Seconds: listing the manifest, the whole move (each file hashed as it is sent), and
    each side's share of the move."""
    start = time.perf_counter()
    built = build_manifest([source], chunk_size=chunk_size)
    listed = time.perf_counter() - start
    manifest = built.manifest.with_qkd_key_ids(["bench"])
    secrets = Secrets.fresh()
    start = time.perf_counter()
    sender = TransferSender(secrets.keys(manifest), FileReader.for_manifest(built),
                            window_chunks=window)
    receiver = TransferReceiver.accept(secrets.keys(manifest), downloads)
    sender_s = receiver_s = 0.0
    for control in receiver.data_to_send():
        sender.receive_control(control)
    while True:
        t0 = time.perf_counter()
        frame = sender.next_frame()
        t1 = time.perf_counter()
        if frame is None:
            break
        receiver.receive_frame(frame)
        controls = receiver.data_to_send()
        t2 = time.perf_counter()
        for control in controls:
            sender.receive_control(control)
        t3 = time.perf_counter()
        sender_s += (t1 - t0) + (t3 - t2)
        receiver_s += t2 - t1
    moved = time.perf_counter() - start
    if receiver.status is not ReceiverStatus.COMPLETE:
        raise SystemExit("benchmark transfer did not complete")
    receiver.forget()
    for path in downloads.rglob("*"):
        if path.is_file():
            path.unlink()
    return {"manifest": listed, "move": moved, "sender": sender_s, "receiver": receiver_s}


def aead_round(size: int, chunk_size: int) -> float:
    aead = AESGCM(os.urandom(32))
    block = os.urandom(chunk_size)
    nonce = os.urandom(12)
    chunks = -(-size // chunk_size)
    start = time.perf_counter()
    for _ in range(chunks):
        aead.encrypt(nonce, block, b"header")
    return time.perf_counter() - start


def copy_round(source: Path, target: Path, chunk_size: int) -> float:
    start = time.perf_counter()
    with open(source, "rb", buffering=0) as src, open(target, "wb", buffering=0) as dst:
        while block := src.read(chunk_size):
            dst.write(block)
        os.fsync(dst.fileno())
    elapsed = time.perf_counter() - start
    target.unlink()
    return elapsed


def measure(args: argparse.Namespace) -> dict:
    size = (256 if args.quick else 1024) * MiB
    rounds = 3 if args.quick else 5
    chunk_sizes = [args.chunk_size] if args.quick else sorted(
        {64 * 1024, args.chunk_size, 1 * MiB})
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-transfer-", dir=args.tmpdir) as tmp:
        source = Path(tmp) / "payload.bin"
        write_seeded_file(source, size, seed=2026)
        downloads = Path(tmp) / "downloads"
        for chunk in chunk_sizes:
            core, listing, aead, copy, send, receive = [], [], [], [], [], []
            for _ in range(rounds):
                times = core_round(source, downloads, chunk, args.window)
                core.append(size / times["move"] / MB)
                listing.append(times["manifest"] * 1000)
                send.append(size / times["sender"] / MB)
                receive.append(size / times["receiver"] / MB)
                aead.append(size / aead_round(size, chunk) / MB)
                copy.append(size / copy_round(source, Path(tmp) / "copy.bin", chunk) / MB)
            results.append({
                "chunk_size": chunk,
                "core_mb_per_s": round(statistics.median(core), 1),
                "aead_baseline_mb_per_s": round(statistics.median(aead), 1),
                "copy_baseline_mb_per_s": round(statistics.median(copy), 1),
                # Building the offer (names and sizes; no hash pass any more).
                "manifest_ms": round(statistics.median(listing), 2),
                # Each side alone (in a real transfer they run in different processes).
                "sender_mb_per_s": round(statistics.median(send), 1),
                "receiver_mb_per_s": round(statistics.median(receive), 1),
            })
    default = next(r for r in results if r["chunk_size"] == args.chunk_size)
    return {
        "mode": "core-only",
        "file_bytes": size,
        "rounds": rounds,
        "window_chunks": args.window,
        "core_mb_per_s": default["core_mb_per_s"],
        "aead_baseline_mb_per_s": default["aead_baseline_mb_per_s"],
        "copy_baseline_mb_per_s": default["copy_baseline_mb_per_s"],
        "sender_mb_per_s": default["sender_mb_per_s"],
        "receiver_mb_per_s": default["receiver_mb_per_s"],
        "by_chunk_size": results,
        # Whole benchmark process (payload generation included), Linux ru_maxrss is in KiB.
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def print_table(data: dict) -> None:
    print(f"core-only, {data['file_bytes'] // MiB} MiB, median of {data['rounds']} rounds")
    print(f"{'chunk':>9} {'core MB/s':>10} {'AEAD MB/s':>10} {'core/AEAD':>10} "
          f"{'copy MB/s':>10} {'core/copy':>10} {'offer ms':>10} {'send MB/s':>10} "
          f"{'recv MB/s':>10}")
    for row in data["by_chunk_size"]:
        print(f"{row['chunk_size']:>9} {row['core_mb_per_s']:>10,.0f} "
              f"{row['aead_baseline_mb_per_s']:>10,.0f} "
              f"{row['core_mb_per_s'] / row['aead_baseline_mb_per_s']:>9.2f}x "
              f"{row['copy_baseline_mb_per_s']:>10,.0f} "
              f"{row['core_mb_per_s'] / row['copy_baseline_mb_per_s']:>9.2f}x "
              f"{row['manifest_ms']:>10,.2f} {row['sender_mb_per_s']:>10,.0f} "
              f"{row['receiver_mb_per_s']:>10,.0f}")
    print(f"peak RSS of the benchmark process: {data['peak_rss_mib']} MiB")


# ---------------------------------------------------------------------------------------------
# End to end: qsecret through its relay, magic-wormhole through its servers, a bare forwarder.


class BenchError(Exception):
    """One method could not be measured; the message says why (with the children's output)."""


@dataclass
class Run:
    """One timed transfer: wall seconds and both clients' peak RSS."""

    seconds: float
    receiver_rss_mib: float | None
    sender_rss_mib: float | None
    sender_seconds: float | None = None  # the sender's own "complete" figure, if it gives one
    accepted_after_s: float | None = None  # sender start to its first "sending" event
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds by role, this round


@dataclass
class Env:
    """What the end-to-end rounds share: the payload, its digest and where things go."""

    root: Path
    source: Path
    digest: bytes
    size: int
    frame: int
    timeout: float
    children: list[Child] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Child:
        child = Child(name, argv, env=env, cwd=cwd)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()


def _script(name: str) -> str:
    """A console script of this venv (twistd), else the one on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise BenchError(f"{name} not found: pip install -e '.[dev]'")
    return found


def timed_transfer(env: Env, label: str, receiver_argv: list[str], sender_argv: list[str],
                   server_port: int, done: Callable[[str], bool] | None,
                   child_env: dict[str, str] | None = None,
                   receiver_cwd: Path | None = None,
                   servers: dict[str, int] | None = None) -> tuple[Run, Child, Child]:
    """Start the receiver, wait until it is connected to its server, then time the sender.

    The clock runs from starting the sender process until the receiver reports completion
    (a stdout line for which ``done`` is true; with ``done=None``, the receiver's successful
    exit). Both processes must exit 0 within the timeout. ``servers`` (role -> pid) are the
    long-running processes whose CPU time over the timed span is reported beside the clients'.
    """
    receiver = env.spawn(f"{label} receiver", receiver_argv, child_env, receiver_cwd)
    try:
        wait_connected(receiver, server_port, timeout=60)
    except ChildError as error:
        receiver.stop()
        raise BenchError(str(error)) from error
    time.sleep(SETTLE_S)  # the connection is up; let it finish its hello/login
    servers = servers or {}
    server_cpu = {role: cpu_seconds(pid) or 0.0 for role, pid in servers.items()}
    receiver_cpu = receiver.cpu_seconds or 0.0
    start = time.perf_counter()
    sender = env.spawn(f"{label} sender", sender_argv, child_env)
    try:
        if done is not None:
            end = receiver.wait_line(done, timeout=env.timeout).at
            code = receiver.wait_exit(timeout=60)
        else:
            code = receiver.wait_exit(timeout=env.timeout)
            end = time.perf_counter()
        server_cpu = {role: (cpu_seconds(pid) or 0.0) - server_cpu[role]
                      for role, pid in servers.items()}
        if code != 0:
            raise BenchError(f"{receiver.name} exited {code}{receiver.tail()}")
        sent = sender.wait_exit(timeout=60)
        if sent != 0:
            raise BenchError(f"{sender.name} exited {sent}{sender.tail()}")
    except ChildError as error:
        raise BenchError(f"{error}\n{sender.name}{sender.tail()}") from error
    finally:
        receiver.stop()
        sender.stop()
    cpu = {"sender": sender.cpu_seconds or 0.0,
           "receiver": (receiver.cpu_seconds or 0.0) - receiver_cpu, **server_cpu}
    run = Run(end - start, receiver.peak_rss_mib, sender.peak_rss_mib,
              cpu_s={role: round(value, 2) for role, value in cpu.items()})
    return run, receiver, sender


def _verify(path: Path, env: Env, label: str) -> None:
    """The received file must be byte-identical to the payload; it is deleted afterwards."""
    try:
        if not path.is_file():
            raise BenchError(f"{label}: received file {path} is missing")
        if path.stat().st_size != env.size or sha256_file(path) != env.digest:
            raise BenchError(f"{label}: received file {path} differs from the payload")
    finally:
        if path.exists():
            path.unlink()


class Bare:
    """The ceiling: a forwarder process and two websockets clients, no crypto, no disk."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.port = free_port()
        self.script = str(Path(__file__).with_name("bare_ws.py"))
        self.forwarder = forwarder = env.spawn("bare forwarder", [
            sys.executable, self.script, "forward", "--port", str(self.port),
            "--frame", str(env.frame), "--timeout", str(env.timeout)])
        wait_listening(self.port, 30, forwarder)

    def round(self, index: int) -> Run:
        base = [sys.executable, self.script]
        common = ["--bytes", str(self.env.size), "--frame", str(self.env.frame),
                  "--timeout", str(self.env.timeout)]
        url = f"ws://127.0.0.1:{self.port}"
        run, receiver, _ = timed_transfer(
            self.env, "bare", [*base, "receive", "--url", f"{url}/recv", *common],
            [*base, "send", "--url", f"{url}/send", *common], self.port,
            done=lambda text: _event(text) in ("complete", "failed"),
            servers={"relay": self.forwarder.pid})
        last = _last_json(receiver)
        if last.get("event") != "complete" or last.get("bytes") != self.env.size:
            raise BenchError(f"bare: receiver counted {last.get('bytes')} bytes, "
                             f"expected {self.env.size}")
        return run


class Wormhole:
    """magic-wormhole 0.24 with its own mailbox server and transit relay on loopback.

    Both clients get ``--no-listen``, so the bytes go through the transit relay as qsecret's
    go through its relay (by default wormhole would connect the two directly on loopback);
    ``--wormhole-direct`` lets them.
    """

    def __init__(self, env: Env, direct: bool) -> None:
        self.env = env
        self.direct = direct
        self.mailbox_port, self.transit_port = free_port(), free_port()
        twistd = _script("twistd")
        work = env.root / "wormhole"
        work.mkdir()
        mailbox = env.spawn("wormhole mailbox", [
            twistd, "--nodaemon", "--pidfile=", f"--logfile={work / 'mailbox.log'}",
            "wormhole-mailbox", f"--port=tcp:{self.mailbox_port}:interface=127.0.0.1",
            f"--channel-db={work / 'mailbox.sqlite'}"], cwd=work)
        transit = env.spawn("wormhole transit relay", [
            twistd, "--nodaemon", "--pidfile=", f"--logfile={work / 'transit.log'}",
            "transitrelay", f"--port=tcp:{self.transit_port}:interface=127.0.0.1"], cwd=work)
        self.servers = {"mailbox": mailbox.pid, "relay": transit.pid}
        wait_listening(self.mailbox_port, 30, mailbox)
        wait_listening(self.transit_port, 30, transit)
        self.downloads = work / "downloads"
        self.downloads.mkdir()

    def round(self, index: int) -> Run:
        code = f"{index + 1}-qsecret-bench"
        base = [sys.executable, "-m", "wormhole",
                "--relay-url", f"ws://127.0.0.1:{self.mailbox_port}/v1",
                "--transit-helper", f"tcp:127.0.0.1:{self.transit_port}"]
        listen = [] if self.direct else ["--no-listen"]
        target = self.downloads / self.env.source.name
        child_env = {**os.environ, "WORMHOLE_QR": "0"}
        run, _, _ = timed_transfer(
            self.env, "wormhole",
            [*base, "receive", "--accept-file", "--hide-progress", *listen,
             "--output-file", str(target), code],
            [*base, "send", "--hide-progress", "--no-qr", *listen, "--code", code,
             str(self.env.source)],
            self.mailbox_port, done=None, child_env=child_env, servers=self.servers)
        _verify(target, self.env, "wormhole")
        return run


PROJECT_PACKAGES = ("client", "relay", "keysource")


def byte_compile_project() -> None:
    """Write the project's bytecode caches (``__pycache__``, ignored by git), as installing
    a wheel would; see the module docstring for why."""
    import compileall

    root = Path(__file__).resolve().parents[2]
    for package in PROJECT_PACKAGES:
        if not compileall.compile_dir(root / package, quiet=1):
            raise BenchError(f"byte-compiling {package} failed")


POOL_KEYS = 2048  # --qkd-link idle: the KME pools' size (about 5 s of the emulated link)


class Qsecret:
    """Two qsecret clients (alice on KME A, bob on KME B) through a local qsecret relay."""

    def __init__(self, env: Env, exits: contextlib.ExitStack, link: str) -> None:
        self.env = env
        for command in ("send-file", "receive-files"):
            probe = subprocess.run([sys.executable, "-m", "client", command, "--help"],
                                   capture_output=True, text=True, timeout=60)
            if probe.returncode != 0:
                reason = (probe.stderr or probe.stdout).strip().splitlines()[-1:]
                raise BenchError(f"`qsecret {command}` is not available yet: "
                                 f"{' '.join(reason) or 'exit ' + str(probe.returncode)}")
        from tests.e2e.stack import PASSPHRASE, start_stack

        byte_compile_project()
        (env.root / "qsecret").mkdir()
        kme_args = () if link == "busy" else ("--max-keys", str(POOL_KEYS),
                                                 "--status-interval", "0.5")
        self.stack = start_stack(env.root / "qsecret", *kme_args)
        exits.callback(self.stack.stop)
        if link == "idle":
            self._wait_link_idle()
        self.child_env = {**os.environ, "QSECRET_PASSPHRASE": PASSPHRASE}
        assert self.stack.relay and self.stack.relay.process
        assert self.stack.kme and self.stack.kme.process
        self.servers = {"relay": self.stack.relay.process.pid,
                        "kme pair": self.stack.kme.process.pid}
        self.downloads = env.root / "qsecret-downloads"
        self.downloads.mkdir()

    def _wait_link_idle(self, timeout: float = 120.0) -> None:
        """Wait until the QKD link has filled most of both pools and run no block for 1.5 s."""
        assert self.stack.kme is not None
        deadline = time.monotonic() + timeout
        last_blocks, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            line = self.stack.kme.wait_for("| link", timeout=30)
            pools = [int(n) for n in re.findall(r"kme-\w+ (\d+)/\d+", line)]
            found = re.search(r"blocks (\d+)", line)
            blocks = int(found.group(1)) if found else -1
            if blocks != last_blocks:
                last_blocks, quiet_since = blocks, time.monotonic()
            elif (len(pools) == 2 and min(pools) >= POOL_KEYS // 2
                  and time.monotonic() - quiet_since >= 1.5):
                return
        raise BenchError(f"the QKD link did not fill the KME pools within {timeout:.0f}s")

    def _args(self, handle: str) -> list[str]:
        return ["--data", str(self.stack.profile(handle)), "--relay", self.stack.relay_url]

    def round(self, index: int) -> Run:
        base = [sys.executable, "-m", "client"]
        run, receiver, sender = timed_transfer(
            self.env, "qsecret",
            [*base, "receive-files", *self._args("bob"), "--accept", "all",
             "--downloads", str(self.downloads), "--json", "--count", "1",
             "--idle", "120"],
            [*base, "send-file", "bob", str(self.env.source), *self._args("alice"), "--json"],
            self.stack.relay_port,
            done=lambda text: _event(text) in ("complete", "failed"),
            child_env=self.child_env, servers=self.servers)
        last = _last_json(receiver, events=("complete", "failed"))
        if last.get("event") != "complete":
            raise BenchError(f"qsecret: receiver reported {last}")
        if last.get("bytes") not in (None, self.env.size):
            raise BenchError(f"qsecret: receiver reported {last.get('bytes')} bytes, "
                             f"expected {self.env.size}")
        paths = last.get("paths") or []
        if len(paths) != 1:
            raise BenchError(f"qsecret: expected one landed path, got {paths}")
        _verify(Path(paths[0]), self.env, "qsecret")
        sending = next((line for line in sender.lines
                        if line.stream == "stdout" and _event(line.text) == "sending"), None)
        if sending is not None:
            run.accepted_after_s = sending.at - sender.started
        sent = _last_json(sender, events=("complete",), required=False)
        if isinstance(sent.get("seconds"), int | float) and sent["seconds"] > 0:
            run.sender_seconds = float(sent["seconds"])
        return run


def _event(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value.get("event") if isinstance(value, dict) else None


def _last_json(child: Child, events: tuple[str, ...] | None = None,
               required: bool = True) -> dict:
    """The last JSON object the child printed on stdout (with one of ``events``, if given)."""
    for line in reversed(child.lines):
        if line.stream != "stdout":
            continue
        try:
            value = json.loads(line.text)
        except ValueError:
            continue
        if isinstance(value, dict) and (events is None or value.get("event") in events):
            return value
    if not required:
        return {}
    raise BenchError(f"{child.name} printed no JSON result{child.tail()}")


METHODS = ("bare", "wormhole", "qsecret")


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods or set(methods) - set(METHODS):
        raise ValueError(f"choose from {', '.join(METHODS)}")
    return methods


def measure_e2e(args: argparse.Namespace) -> dict:
    size = args.size_mib * MiB if args.size_mib else (256 if args.quick else 1024) * MiB
    rounds = args.rounds or (2 if args.quick else 3)
    methods = _methods(args.methods)
    timeout = args.timeout or 60 + size / 2e6  # generous: 2 MB/s plus start-up
    runs: dict[str, list[Run]] = {m: [] for m in methods}
    errors: dict[str, str] = {}
    with contextlib.ExitStack() as exits:
        tmp = Path(exits.enter_context(
            tempfile.TemporaryDirectory(prefix="bench-transfer-e2e-", dir=args.tmpdir)))
        source = tmp / "payload.bin"
        digest = write_seeded_file(source, size, seed=2026)
        env = Env(tmp, source, digest, size, args.frame, timeout)
        exits.callback(env.stop_all)
        setups: dict[str, Callable[[], Bare | Wormhole | Qsecret]] = {
            "bare": lambda: Bare(env),
            "wormhole": lambda: Wormhole(env, args.wormhole_direct),
            "qsecret": lambda: Qsecret(env, exits, args.qkd_link),
        }
        movers: dict[str, Bare | Wormhole | Qsecret] = {}
        for method in methods:
            try:
                movers[method] = setups[method]()
            except (BenchError, ChildError, ServiceError, AssertionError,
                    subprocess.SubprocessError) as error:
                errors[method] = f"setup: {error}"
        for index in range(rounds):  # interleaved, so background load hits all alike
            for method, mover in movers.items():
                if method in errors:
                    continue
                try:
                    runs[method].append(mover.round(index))
                except (BenchError, ChildError) as error:
                    errors[method] = f"round {index + 1}: {error}"
                print(f"  round {index + 1}/{rounds} {method}: "
                      + (f"{size / runs[method][-1].seconds / MB:,.1f} MB/s"
                         if method not in errors else "failed"), flush=True)
    return summarize(size, rounds, args, methods, runs, errors)


def _peak(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def summarize(size: int, rounds: int, args: argparse.Namespace, methods: list[str],
              runs: dict[str, list[Run]], errors: dict[str, str]) -> dict:
    data: dict = {"mode": "end-to-end", "file_bytes": size, "rounds": rounds,
                  "frame_bytes": args.frame, "qkd_link": args.qkd_link,
                  "wormhole_path": "direct" if args.wormhole_direct else "transit relay",
                  "qsecret_bytecode": "compiled before the rounds (as a wheel install is)"}
    key = {"bare": "bare_ws", "wormhole": "wormhole", "qsecret": "qsecret"}
    for method in methods:
        done = runs[method] if method not in errors else []
        name = key[method]
        data[f"{name}_mb_per_s"] = (round(statistics.median(size / r.seconds / MB
                                                            for r in done), 1)
                                    if done else None)
        data[f"{name}_rounds_mb_per_s"] = [round(size / r.seconds / MB, 1) for r in runs[method]]
        data[f"{name}_receiver_peak_rss_mib"] = _peak([r.receiver_rss_mib for r in done])
        data[f"{name}_sender_peak_rss_mib"] = _peak([r.sender_rss_mib for r in done])
        roles = sorted({role for r in done for role in r.cpu_s})
        data[f"{name}_cpu_s"] = {role: round(statistics.median(r.cpu_s.get(role, 0.0)
                                                               for r in done), 2)
                                 for role in roles}
    qs, wh, bare = (data.get(f"{k}_mb_per_s") for k in ("qsecret", "wormhole", "bare_ws"))
    if "qsecret" in methods and "qsecret" not in errors:
        own = [size / r.sender_seconds / MB for r in runs["qsecret"] if r.sender_seconds]
        # The sender's own clock (no process start-up); for reference, not the headline.
        data["qsecret_sender_reported_mb_per_s"] = (round(statistics.median(own), 1)
                                                    if own else None)
        # Start-up, profile unlock, connect, offer and acceptance: part of the headline time.
        accepted = [r.accepted_after_s for r in runs["qsecret"] if r.accepted_after_s]
        data["qsecret_accepted_after_s"] = (round(statistics.median(accepted), 2)
                                            if accepted else None)
    data["vs_wormhole"] = round(qs / wh, 2) if qs and wh else None
    data["vs_bare"] = round(qs / bare, 2) if qs and bare else None
    data["peak_rss_mib"] = data.get("qsecret_receiver_peak_rss_mib")  # the receiver's
    data["targets"] = {
        "twice_wormhole": None if data["vs_wormhole"] is None else data["vs_wormhole"] >= 2,
        "at_least_40_percent_of_bare": None if data["vs_bare"] is None
        else data["vs_bare"] >= 0.40,
        "receiver_peak_rss_under_200_mib": None if data["peak_rss_mib"] is None
        else data["peak_rss_mib"] < 200,
    }
    data["errors"] = errors
    return data


def print_e2e_table(data: dict) -> None:
    size_mib = data["file_bytes"] // MiB
    print(f"end-to-end on loopback, {size_mib} MiB file, median of {data['rounds']} rounds "
          f"(wall time from starting the sender to the receiver's completion; QKD link "
          f"{data.get('qkd_link', 'busy')})")
    print(f"{'method':<10} {'MB/s':>9} {'rounds MB/s':>20} {'recv RSS MiB':>13} "
          f"{'send RSS MiB':>13}")
    for name, label in (("qsecret", "qsecret"), ("wormhole", "wormhole"), ("bare_ws", "bare ws")):
        if f"{name}_mb_per_s" not in data:
            continue
        rate = data[f"{name}_mb_per_s"]
        rounds = ", ".join(f"{r:,.1f}" for r in data[f"{name}_rounds_mb_per_s"])
        print(f"{label:<10} {'failed' if rate is None else f'{rate:,.1f}':>9} {rounds:>20} "
              f"{_fmt(data[f'{name}_receiver_peak_rss_mib']):>13} "
              f"{_fmt(data[f'{name}_sender_peak_rss_mib']):>13}")
    print("CPU seconds per transfer (median; the timed span, servers included):")
    for name, label in (("qsecret", "qsecret"), ("wormhole", "wormhole"), ("bare_ws", "bare ws")):
        cpu = data.get(f"{name}_cpu_s")
        if cpu:
            print(f"  {label:<9} " + ", ".join(f"{role} {value:.2f}" for role, value in cpu.items())
                  + f"; total {sum(cpu.values()):.2f}")
    if data.get("qsecret_sender_reported_mb_per_s"):
        print(f"qsecret as its sender reports it (own clock, no start-up): "
              f"{data['qsecret_sender_reported_mb_per_s']:,.1f} MB/s; sending began "
              f"{_fmt(data.get('qsecret_accepted_after_s'))} s after the sender started")
    print(f"vs_wormhole (qsecret/wormhole): {_fmt(data['vs_wormhole'])}  target >= 2")
    print(f"vs_bare (qsecret/bare ws):      {_fmt(data['vs_bare'])}  target >= 0.40")
    print(f"qsecret receiver peak RSS:      {_fmt(data['peak_rss_mib'])} MiB  target < 200")
    for method, error in data["errors"].items():
        print(f"{method} FAILED: {error}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}" if value < 10 else f"{value:,.1f}"


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the ExitStacks: children stopped, temp dirs gone


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core-only", action="store_true",
                        help="measure the transfer core on disk, no sockets")
    parser.add_argument("--quick", action="store_true",
                        help="256 MiB (end to end: 2 rounds; core-only: 3 rounds, one chunk size)")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON here")
    parser.add_argument("--tmpdir", help="where to put the payload (default: system temp)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                        help="core-only: chunk size")
    parser.add_argument("--window", type=int, default=8, help="core-only: chunks in flight")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="end to end: which of bare,wormhole,qsecret to run")
    parser.add_argument("--rounds", type=int, help="end to end: rounds (default 2 quick, 3 full)")
    parser.add_argument("--size-mib", type=int, help="end to end: file size instead of the default")
    parser.add_argument("--frame", type=int, default=MAX_BINARY_PAYLOAD,
                        help="end to end: bare forwarder frame size (qsecret's binary payload)")
    parser.add_argument("--timeout", type=float,
                        help="end to end: seconds allowed per transfer (default 60 + 2 MB/s)")
    parser.add_argument("--qkd-link", choices=["idle", "busy"], default="idle",
                        help="end to end: start once the emulated QKD link has filled small KME "
                             "pools (idle, default) or let it fill large ones throughout (busy)")
    parser.add_argument("--wormhole-direct", action="store_true",
                        help="let wormhole connect its clients directly, not via its relay")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    if args.core_only:
        data = measure(args)
        print_table(data)
        write_json(args.json, data)
        return 0
    if args.rounds is not None and not 1 <= args.rounds <= 20:
        parser.error("--rounds must be 1..20")
    if args.size_mib is not None and not 1 <= args.size_mib <= 8192:
        parser.error("--size-mib must be 1..8192")
    try:
        _methods(args.methods)
    except ValueError as error:
        parser.error(f"--methods: {error}")
    if not 1024 <= args.frame <= MAX_BINARY_PAYLOAD:
        parser.error(f"--frame must be 1024..{MAX_BINARY_PAYLOAD}")
    data = measure_e2e(args)
    print_e2e_table(data)
    write_json(args.json, data)
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
