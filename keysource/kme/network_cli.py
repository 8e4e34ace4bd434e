"""``qsecret network up | status``: a whole QKD network on this machine, one process per node.

``up`` makes the network's PKI (one KME certificate per node, the SAE certificates the
topology lists), starts ``qsecret kme serve --topology T --node N`` for every node (so any
node can be killed and started again alone), writes ``DIR/network.json`` (which topology,
each node's URL, pid and log file) and prints a status table every few seconds until Ctrl+C,
which stops every node. ``status`` prints the table once, from ``DIR/network.json``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .network_status import STATE_FILE

if TYPE_CHECKING:
    from keysource.network.topology import Topology

DEFAULT_DATA = Path("qsecret-network")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    network = subparsers.add_parser(
        "network",
        help="run a QKD network of KMEs on this machine (one process per node)",
        description=(
            "A QKD network: nodes (one KME each) joined by emulated QKD links, keys for SAEs "
            "at distant nodes relayed hop by hop through trusted nodes. Start with "
            "'qsecret network up --topology metro'."),
    )
    sub = network.add_subparsers(dest="network_command", metavar="SUBCOMMAND")
    network.set_defaults(func=lambda args: _help(network))
    up = sub.add_parser(
        "up", help="start every node of a topology and show the network's status",
        description=(
            "Start one 'qsecret kme serve --topology T --node N' process per node (logs in "
            "DATA/<node>/node.log), then print a status table (per link: km, key rate, QBER, "
            "free keys, state; per node: SAEs served, keys relayed) until Ctrl+C stops them."),
    )
    up.add_argument("--topology", default="metro", metavar="FILE|NAME",
                    help="a topology TOML file or a built-in: pair, metro, backbone "
                         "(default metro)")
    up.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help=f"directory for the PKI and every node's pools (default ./{DEFAULT_DATA})")
    up.add_argument("--interval", type=float, default=5.0, metavar="SECONDS",
                    help="print the status table every SECONDS (0: once all are ready, and "
                         "when a node exits)")
    up.add_argument("--frame-bits", type=int, metavar="BITS",
                    help="reconciliation frame of every link (smaller: keys sooner)")
    up.add_argument("--keys-ready", type=int, default=0, metavar="N",
                    help="say 'network keys ready' once every link pool holds N free keys")
    up.add_argument("--max-keys", type=int, help="each link pool's size in keys")
    up.add_argument("--link", choices=["emulated", "none"], default="emulated",
                    help="none: no QKD links (pools filled by other means)")
    up.set_defaults(func=_run_up)
    status = sub.add_parser("status", help="print the status table of a running network",
                            description="Ask every node of DATA/network.json for its figures.")
    status.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"the network's directory (default ./{DEFAULT_DATA})")
    status.add_argument("--json", action="store_true", help="every node's raw figures")
    status.set_defaults(func=_run_status)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _fail(message: str) -> int:
    print(f"qsecret network: {message}", file=sys.stderr)
    return 2


class _NodeProcess:
    """One node's process; its output goes to its log file, and 'ready' lines are noticed."""

    def __init__(self, name: str, command: list[str], log: Path, wake: threading.Event
                 ) -> None:
        self.name = name
        self.wake = wake  # set when the process exits
        self.command = command
        self.log = log
        self.ready = threading.Event()
        self.keys_ready = threading.Event()
        self.exited = threading.Event()
        log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("a", encoding="utf-8") as out:
            for line in self.proc.stdout:
                out.write(line)
                out.flush()
                if line.startswith("ready "):
                    self.ready.set()
                elif line.startswith("keys ready"):
                    self.keys_ready.set()
        self.proc.wait()
        self.exited.set()
        self.wake.set()
        self.ready.set()  # nobody waits for a process that is gone
        self.keys_ready.set()


def _wait_all(events: list[threading.Event], stop: threading.Event) -> bool:
    for event in events:
        while not event.wait(0.2):
            if stop.is_set():
                return False
    return not stop.is_set()


def _run_up(args: argparse.Namespace) -> int:
    from keysource.network.topology import BUILTIN, TopologyError, load

    from .pki import Pki, PkiError
    from .runtime import _make_psk

    try:
        topology = load(args.topology)
    except TopologyError as exc:
        return _fail(str(exc))
    spec = args.topology if args.topology in BUILTIN else str(Path(args.topology).resolve())
    data = args.data.resolve()
    try:
        created = Pki(data / "pki").ensure(
            kme_ids=[n.name for n in topology.nodes],
            sae_ids=[s for n in topology.nodes for s in n.saes], psk=_make_psk())
    except PkiError as exc:
        return _fail(str(exc))
    if created:
        print(f"created the network's PKI in {data / 'pki'} ({len(created)} files)")
    extra = ["--link", args.link]
    if args.frame_bits:
        extra += ["--frame-bits", str(args.frame_bits)]
    if args.keys_ready:
        extra += ["--keys-ready", str(args.keys_ready)]
    if args.max_keys:
        extra += ["--max-keys", str(args.max_keys)]
    stop = threading.Event()
    wake = threading.Event()  # stop, or a node exited

    def on_signal(*_: object) -> None:
        stop.set()
        wake.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    started = time.monotonic()
    nodes: dict[str, _NodeProcess] = {}
    try:
        for node in topology.nodes:
            command = [sys.executable, "-m", "client", "kme", "serve", "--topology", spec,
                       "--node", node.name, "--data", str(data), "--status-interval", "0",
                       *extra]
            nodes[node.name] = _NodeProcess(node.name, command, data / node.name / "node.log",
                                            wake)
        _write_state(data, spec, topology, nodes)
        print(f"network {topology.name}: {len(nodes)} nodes, {len(topology.links)} links; "
              f"state in {data / STATE_FILE}, logs in {data}/<node>/node.log", flush=True)
        if not _wait_all([n.ready for n in nodes.values()], stop):
            return 0
        print(f"network ready: {_count_up(nodes)}/{len(nodes)} nodes serving after "
              f"{time.monotonic() - started:.1f} s", flush=True)
        if args.keys_ready:
            if not _wait_all([n.keys_ready for n in nodes.values()], stop):
                return 0
            print(f"network keys ready: every link pool holds {args.keys_ready} keys after "
                  f"{time.monotonic() - started:.1f} s", flush=True)
        said_exit: set[str] = set()
        while not stop.is_set():
            wake.clear()
            for name, node in nodes.items():
                if node.exited.is_set() and name not in said_exit:
                    said_exit.add(name)
                    print(f"node {name} exited ({node.proc.returncode}); start it again "
                          f"alone with: qsecret {' '.join(node.command[3:])}", flush=True)
            print(status_table(topology, data, started), flush=True)
            wake.wait(args.interval if args.interval > 0 else None)
    finally:
        for node in nodes.values():
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in nodes.values():
            try:
                node.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        print("network stopped", flush=True)
    return 0


def _count_up(nodes: dict[str, _NodeProcess]) -> int:
    return sum(not n.exited.is_set() for n in nodes.values())


def _write_state(data: Path, spec: str, topology: Topology,
                 nodes: dict[str, _NodeProcess]) -> None:
    state = {"topology": spec, "nodes": {
        name: {"url": topology.node(name).url, "pid": n.proc.pid, "log": str(n.log)}
        for name, n in nodes.items()}}
    (data / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def status_table(topology: Topology, data: Path, started: float | None = None,
                 stats: dict[str, dict[str, Any] | str] | None = None) -> str:
    """Per link: km, key rate, QBER, free keys, state; per node: SAEs and relay counts."""
    from .network_status import network_view, node_stats

    view = network_view(topology, node_stats(topology, data) if stats is None else stats)
    when = f" +{time.monotonic() - started:.0f}s" if started is not None else ""
    lines = [f"[{time.strftime('%H:%M:%S')}{when}] network {view.name}: "
             f"{view.nodes_up}/{len(view.nodes)} nodes up",
             f"  {'link':<22} {'km':>7} {'keys/s':>7} {'QBER':>7} {'free keys':>10}  state"]
    for link in view.links:
        if link.free is None:
            lines.append(f"  {link.name:<22} {link.km:>7.1f} {'-':>7} {'-':>7} {'-':>10}  "
                         f"{link.state}")
            continue
        qber = "-" if link.qber is None else f"{link.qber * 100:.2f}%"
        lines.append(f"  {link.name:<22} {link.km:>7.1f} {link.rate or 0.0:>7.1f} "
                     f"{qber:>7} {link.free:>10}  {link.state}")
    lines.append(f"  {'node':<10} {'SAEs':<24} {'relayed':>8} {'forwarded':>9} "
                 f"{'received':>8} {'refused':>7}")
    for node in view.nodes:
        saes = ",".join(node.saes) or "-"
        if node.down is not None:
            lines.append(f"  {node.name:<10} {saes:<24} down: {node.down}")
            continue
        lines.append(f"  {node.name:<10} {saes:<24} {node.relayed:>8} {node.forwarded:>9} "
                     f"{node.received:>8} {node.refused:>7}")
    return "\n".join(lines)


def _run_status(args: argparse.Namespace) -> int:
    from .network_status import NetworkUnknown, load_network, node_stats

    try:
        topology = load_network(args.data)
    except NetworkUnknown as exc:
        return _fail(str(exc))
    stats = node_stats(topology, args.data)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(status_table(topology, args.data, stats=stats))
    return 0 if all(isinstance(s, dict) for s in stats.values()) else 1
