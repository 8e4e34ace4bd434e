"""``qsecret demo``: a relay, a QKD network (or a KME pair), the users, the TUI.

Everything runs on loopback from one command; quitting the TUI stops what it started. By
default the ``metro`` network (``qsecret network up``): alice, bob and carol at three
nodes, dave at alice's, every pair introduced. ``--pair`` (or any option of the pair: its
ports, ``--km``, ``--eve-fraction``) runs the two KMEs of one QKD link with alice and bob.
The other users are opened in other terminals with the commands the demo prints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from client.config import ClientConfig, load_config
from client.messenger.api import MessengerError
from client.processes import ServiceError, ServiceProcess, port_free, stop_all, terminate_all

from .errors import EXIT_STATUS_HELP, CliError
from .help import HelpFormatter, examples

if TYPE_CHECKING:
    from textual.app import App

DEMO_PASSPHRASE = "qsecret-demo"
GREETING = ("Hi Bob! This is the qsecret demo: every key here mixes QKD key material, "
            "ML-KEM-768 and X25519 (see the key panel).")
DEMO_KEYS_READY = 16  # free keys in each pool before the users are introduced
KEYS_READY_WAIT_S = 30.0
USERS = (("alice", "sae-alice", "port_a"), ("bob", "sae-bob", "port_b"))
NETWORK_USERS = ("alice", "bob", "carol", "dave")  # SAE sae-<handle>, placed by the topology
NETWORK_READY_WAIT_S = 90.0  # every node serving (8 processes starting on 2 cores)
NETWORK_KEYS_WAIT_S = 90.0  # every link pool holding DEMO_KEYS_READY keys
NETWORK_FRAME_BITS = 65536  # smaller reconciliation frames: the first keys sooner
NETWORK_MAX_KEYS = 8000  # each link pool's size: full soon, then its link rests (CPU for TUIs)
DEFAULT_TOPOLOGY = "metro"
PAIR_PORTS = {"port_a": 8441, "port_b": 8442}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = subparsers.add_parser(
        "demo",
        help="one-machine demo: relay, QKD network (or KME pair), users, the TUI",
        description=(
            "Start a local relay and the metro QKD network (8 KMEs joined by emulated QKD "
            "links, keys relayed by trusted nodes), create the users alice, bob, carol and "
            "dave (passphrase $QSECRET_PASSPHRASE, default 'qsecret-demo'; alice, bob and "
            "carol at three nodes, dave at alice's), introduce every pair, and open the chat "
            "TUI as alice. It prints the commands that open the others in other terminals. "
            "--pair runs two KMEs of one QKD link with alice and bob instead. Quitting the "
            "TUI (Ctrl+Q) stops everything the demo started."
        ),
        epilog=examples("qsecret demo", "qsecret demo --pair --eve-fraction 0.3   # the alarm",
                        "qsecret demo --no-tui --relay-port 9765") + "\n\n" + EXIT_STATUS_HELP,
        formatter_class=HelpFormatter,
    )
    demo.add_argument("--dir", type=Path,
                      default=Path(platformdirs.user_data_dir("qsecret", appauthor=False)) / "demo",
                      help="where the demo keeps its relay queue, KME pools and profiles")
    demo.add_argument("--relay-port", type=int, default=8765)
    demo.add_argument("--topology", metavar="NAME|FILE",
                      help=f"the QKD network (default {DEFAULT_TOPOLOGY}; a topology file "
                           "must serve sae-alice, sae-bob, sae-carol and sae-dave; its nodes' "
                           "and links' ports are its own)")
    demo.add_argument("--pair", action="store_true",
                      help="two KMEs of one QKD link and two users (alice, bob) instead")
    demo.add_argument("--port-a", type=int,
                      help=f"HTTPS port of alice's KME (pair; default {PAIR_PORTS['port_a']})")
    demo.add_argument("--port-b", type=int,
                      help=f"HTTPS port of bob's KME (pair; default {PAIR_PORTS['port_b']})")
    demo.add_argument("--km", type=float, help="fibre length of the emulated QKD link (pair)")
    demo.add_argument("--eve-fraction", type=float,
                      help="an eavesdropper intercepts this fraction of pulses (1 = all; "
                           "pair: a network's eavesdroppers are in its topology file)")
    demo.add_argument("--no-tui", action="store_true",
                      help="start the services and users, print how to chat, wait for Ctrl+C")
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    pair_options = [f"--{name.replace('_', '-')}" for name in ("port_a", "port_b", "km",
                                                                 "eve_fraction")
                    if getattr(args, name) is not None]
    if args.topology and (args.pair or pair_options):
        raise CliError(f"{' '.join(pair_options) or '--pair'} is for the KME pair demo; "
                       "--topology runs a network (its eavesdroppers and ports are in the "
                       "topology file)")
    base: Path = args.dir.expanduser().resolve()
    base.mkdir(parents=True, exist_ok=True)
    if not (args.pair or pair_options):
        return _run_network_demo(args, base, args.topology or DEFAULT_TOPOLOGY)
    for name, port in PAIR_PORTS.items():
        if getattr(args, name) is None:
            setattr(args, name, port)
    for port in (args.relay_port, args.port_a, args.port_b):
        if not port_free(port):
            raise CliError(f"port {port} on 127.0.0.1 is in use (is a demo already running?); "
                           "pick others with --relay-port/--port-a/--port-b")
    passphrase = os.environ.get("QSECRET_PASSPHRASE") or DEMO_PASSPHRASE
    kme_args = ["kme", "pair", "--data", str(base / "kme"), "--port-a", str(args.port_a),
                "--port-b", str(args.port_b), "--status-interval", "0",
                "--keys-ready", str(DEMO_KEYS_READY)]
    if args.km is not None:
        kme_args += ["--km", str(args.km)]
    if args.eve_fraction:
        kme_args += ["--eve-fraction", str(args.eve_fraction)]
    services = [
        ServiceProcess("relay", ["relay", "--port", str(args.relay_port), "--data",
                                 str(base / "relay")], log=base / "relay.log"),
        ServiceProcess("kme", kme_args, log=base / "kme.log"),
    ]
    stopper = _SignalStop(services)
    try:
        print(f"qsecret demo in {base}")
        services[0].start().wait_for("relay listening")
        print(f"  relay      ws://127.0.0.1:{args.relay_port}  (log {base / 'relay.log'})")
        services[1].start().wait_for("ready kme-bob", timeout=60)
        # The greeting below mixes QKD keys only once the link has made some: wait for them
        # (a few blocks of the emulated link) rather than greet on degraded keys. An
        # eavesdropper (--eve-fraction) may stop the link: then go on, and say so.
        try:
            services[1].wait_for("keys ready", timeout=KEYS_READY_WAIT_S)
        except ServiceError:
            if not services[1].running:
                raise
            print(f"  no QKD keys after {KEYS_READY_WAIT_S:.0f}s (see {base / 'kme.log'}): "
                  "the first messages say 'degraded: no QKD'")
        print(f"  KME pair   https://127.0.0.1:{args.port_a} and :{args.port_b}, QKD link running"
              f"  (log {base / 'kme.log'})")
        configs = _profiles(base, args, passphrase)
        asyncio.run(_introduce(configs, passphrase))
        bob = configs["bob"]
        other = (f"QSECRET_PASSPHRASE={shlex.quote(passphrase)} "
                 f"{_qsecret_command()} chat --data {shlex.quote(str(bob.data_dir))}")
        print("\nOpen bob in a second terminal with:\n\n  " + other + "\n")
        if args.no_tui:
            print("Services running; Ctrl+C stops them.")
            _wait_forever(services)
            return 0
        return _run_tui(configs["alice"], passphrase, other, stopper)
    except ServiceError as exc:
        raise CliError(str(exc)) from None
    finally:
        stop_all(services)
        with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
            print("demo stopped: relay and KMEs shut down")


def _run_network_demo(args: argparse.Namespace, base: Path, spec: str) -> int:
    """The demo on a QKD network (``--topology``): one ``qsecret network up`` for every node,
    four users at the nodes the topology names for them, every pair introduced."""
    from keysource.network.topology import BUILTIN, TopologyError, load

    try:
        topology = load(spec)
    except TopologyError as exc:
        raise CliError(str(exc)) from None
    nodes = {h: topology.node_of_sae(f"sae-{h}") for h in NETWORK_USERS}
    unplaced = [f"sae-{h}" for h, node in nodes.items() if node is None]
    if unplaced:
        raise CliError(f"topology {topology.name!r} serves no {', '.join(unplaced)}: the "
                       f"network demo needs a node for each of sae-{', sae-'.join(NETWORK_USERS)}")
    ports = [args.relay_port, *(n.port for n in topology.nodes),
             *(link.port for link in topology.links)]
    for port in ports:
        if not port_free(port):
            raise CliError(f"port {port} on 127.0.0.1 is in use (is a demo or a network already "
                           "running?); the topology file names the nodes' and links' ports")
    passphrase = os.environ.get("QSECRET_PASSPHRASE") or DEMO_PASSPHRASE
    spec = spec if spec in BUILTIN else str(Path(spec).resolve())
    net = base / "network"
    services = [
        ServiceProcess("relay", ["relay", "--port", str(args.relay_port), "--data",
                                 str(base / "relay")], log=base / "relay.log"),
        ServiceProcess("network", ["network", "up", "--topology", spec, "--data", str(net),
                                   "--interval", "0", "--keys-ready", str(DEMO_KEYS_READY),
                                   "--frame-bits", str(NETWORK_FRAME_BITS),
                                   "--max-keys", str(NETWORK_MAX_KEYS)],
                       log=base / "network.log"),
    ]
    stopper = _SignalStop(services)
    try:
        print(f"qsecret demo in {base}")
        services[0].start().wait_for("relay listening")
        print(f"  relay      ws://127.0.0.1:{args.relay_port}  (log {base / 'relay.log'})")
        services[1].start().wait_for("network ready", timeout=NETWORK_READY_WAIT_S)
        try:  # as for the pair: greet on QKD keys, not degraded ones
            services[1].wait_for("network keys ready", timeout=NETWORK_KEYS_WAIT_S)
        except ServiceError:
            if not services[1].running:
                raise
            print(f"  not every link has QKD keys after {NETWORK_KEYS_WAIT_S:.0f}s (see "
                  f"{base / 'network.log'}): some first messages may say 'degraded: no QKD'")
        print(f"  network    {topology.name}: {len(topology.nodes)} nodes, "
              f"{len(topology.links)} QKD links running  (logs {net}/<node>/node.log; "
              f"qsecret network status --data {shlex.quote(str(net))})")
        kmes = {h: (topology.node(node).url, f"sae-{h}") for h, node in nodes.items()
                if node is not None}
        configs = _profiles(base, args, passphrase, kmes=kmes, pki=net / "pki")
        for handle, node in nodes.items():
            print(f"  {handle:<6} at node {node}")
        asyncio.run(_introduce_all(configs, passphrase))
        others = {h: (f"QSECRET_PASSPHRASE={shlex.quote(passphrase)} {_qsecret_command()} "
                      f"chat --data {shlex.quote(str(configs[h].data_dir))}")
                  for h in NETWORK_USERS[1:]}
        print("\nOpen the others in other terminals with:\n")
        for handle, command in others.items():
            print(f"  {handle}:\n  {command}\n")
        if args.no_tui:
            print("Services running; Ctrl+C stops them.")
            _wait_forever(services)
            return 0
        return _run_tui(configs["alice"], passphrase, "\n".join(others.values()), stopper,
                        who="the others")
    except ServiceError as exc:
        raise CliError(str(exc)) from None
    finally:
        stop_all(services)
        with contextlib.suppress(OSError):
            print("demo stopped: relay and network shut down")


async def _introduce_all(configs: dict[str, ClientConfig], passphrase: str) -> None:
    """Every user logs in once (prekeys), then each adds and greets every later one."""
    from client.messenger.profile import open_profile

    handles = list(configs)
    for handle in handles:
        user = open_profile(configs[handle], passphrase)
        await user.start()
        try:
            await user.wait_online(15)
        finally:
            await user.stop()
    for i, handle in enumerate(handles):
        user = open_profile(configs[handle], passphrase)
        await user.start()
        try:
            await user.wait_online(15)
            known = {c.handle for c in user.contacts()}
            for peer in handles[i + 1:]:
                if peer in known:
                    continue
                await user.add_contact(peer)
                text = GREETING if (handle, peer) == ("alice", "bob") else (
                    f"Hi {peer.capitalize()}! {handle} here, on the QKD network demo.")
                await user.send_and_wait(peer, text)
                print(f"  {handle} added {peer} as a contact and greeted them")
        except MessengerError as exc:
            print(f"  (could not introduce {handle} to the others yet: {exc})", file=sys.stderr)
        finally:
            await user.stop()


def _profiles(base: Path, args: argparse.Namespace, passphrase: str, *,
              kmes: dict[str, tuple[str, str]] | None = None,
              pki: Path | None = None) -> dict[str, ClientConfig]:
    """The users' profiles: the pair's two (default), or ``kmes``: handle -> (KME URL,
    SAE_ID) with the network's ``pki``."""
    from client.messenger.profile import create_profile, store_path

    pki = pki or base / "kme" / "pki"
    if kmes is None:
        kmes = {handle: (f"https://127.0.0.1:{getattr(args, port_attr)}", sae_id)
                for handle, sae_id, port_attr in USERS}
    configs = {}
    for handle, (kme_url, sae_id) in kmes.items():
        config = load_config(base / handle)
        config = replace(
            config,
            relay_url=f"ws://127.0.0.1:{args.relay_port}",
            kme_url=kme_url,
            sae_id=sae_id,
            kme_ca=str(pki / "ca.pem"),
            sae_cert=str(pki / "sae" / f"{sae_id}.pem"),
            sae_key=str(pki / "sae" / f"{sae_id}.key"),
        )
        if store_path(config).exists():
            config.save()  # ports may have changed since the last demo
        else:
            create_profile(config, handle, passphrase)
            print(f"  created user {handle} ({base / handle})")
        configs[handle] = config
    return configs


async def _introduce(configs: dict[str, ClientConfig], passphrase: str) -> None:
    """Log bob in once (publishes his prekeys), then let alice add him as a contact."""
    from client.messenger.profile import open_profile

    bob = open_profile(configs["bob"], passphrase)
    await bob.start()
    try:
        await bob.wait_online(15)  # until his login work, the prekey upload, is done
    finally:
        await bob.stop()
    alice = open_profile(configs["alice"], passphrase)
    await alice.start()
    try:
        await alice.wait_online(15)
        if "bob" not in {c.handle for c in alice.contacts()}:
            await alice.add_contact("bob")
            await alice.send_and_wait("bob", GREETING)
            print("  alice added bob as a contact and greeted him")
    except MessengerError as exc:
        print(f"  (could not introduce the users yet: {exc})", file=sys.stderr)
    finally:
        await alice.stop()


def _run_tui(config: ClientConfig, passphrase: str, other: str, stopper: _SignalStop,
             who: str = "bob") -> int:
    from client.messenger.profile import open_profile
    from client.tui.app import QsecretApp
    from keysource.kme.network_status import NetworkSource

    messenger = open_profile(config, passphrase)
    app = QsecretApp(None, export_dir=config.data_dir / "exports", messenger=messenger,  # type: ignore[arg-type]
                     banner=f"You are alice. Open {who} in another terminal:\n{other}",
                     network=NetworkSource.for_profile(config.kme_ca, config.sae_cert,
                                                       config.sae_key))
    stopper.app = app
    try:
        app.run()
    finally:
        stopper.app = None
    stopper.exit_if_signalled()
    print(f"\nTo chat again as {who} while a demo runs:\n  " + other.replace("\n", "\n  "))
    return 0


class _SignalStop:
    """Closing the terminal (SIGHUP) or a plain kill (SIGTERM) must still stop the services,
    which run in sessions of their own.

    On the first signal: ignore further ones (closing a terminal can deliver SIGHUP twice,
    and a second SystemExit inside ``finally`` would cut ``stop_all`` short and orphan the
    services), send the services SIGTERM at once (whatever the TUI does next), and then
    unwind: the TUI is asked to exit on its own event loop (an exception raised at a random
    point inside Textual can wedge its output thread), anything else gets SystemExit so
    ``finally`` waits for the services."""

    def __init__(self, services: list[ServiceProcess]) -> None:
        self.services = services
        self.app: App[object] | None = None  # the running TUI, if any
        self.signum: int | None = None
        for signum in (signal.SIGHUP, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        for other in (signal.SIGHUP, signal.SIGTERM):
            signal.signal(other, signal.SIG_IGN)
        # A hung-up terminal also sends SIGCONT; Textual's handler for it restarts its
        # driver (new output thread) on the dead terminal, and its shutdown then blocks for
        # ever on the old thread's queue. Nothing is stopped that SIGCONT should resume.
        signal.signal(signal.SIGCONT, signal.SIG_DFL)
        self.signum = signum
        terminate_all(self.services)
        app = self.app
        try:
            loop = asyncio.get_running_loop() if app is not None else None
        except RuntimeError:  # the TUI's loop has not started yet, or has ended
            loop = None
        if app is None or loop is None:
            raise SystemExit(128 + signum)
        # Thread-safe, so also safe here: it only queues a callback and wakes the loop.
        loop.call_soon_threadsafe(app.exit, 128 + signum)

    def exit_if_signalled(self) -> None:
        if self.signum is not None:
            raise SystemExit(128 + self.signum)


def _qsecret_command() -> str:
    """How to run qsecret from another terminal: the script beside this interpreter."""
    script = Path(sys.executable).parent / "qsecret"
    if script.exists() and shutil.which("qsecret") != str(script):
        return shlex.quote(str(script))
    return "qsecret"


def _wait_forever(services: list[ServiceProcess]) -> None:
    import time

    try:
        while all(s.running for s in services):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return
    dead = [s.name for s in services if not s.running]
    raise CliError(f"{', '.join(dead)} stopped unexpectedly")
