"""``qsecret kme ...``: run KMEs, look at them, and manage their certificates."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .defaults import (
    DEFAULT_HOST,
    DEFAULT_LINK_PORT,
    DEFAULT_PORT_A,
    DEFAULT_PORT_B,
    DEFAULT_REDELIVERY_GRACE_S,
    KME_A,
    KME_B,
    SAE_A,
    SAE_B,
)
from .etsi import Limits
from .pki import Pki, PkiError
from .pool import (
    DEFAULT_BINDING_TTL_S,
    POOL_SHARE_PER_MASTER,
    POOL_SHARE_PER_PAIR,
    BindingLimits,
)

if TYPE_CHECKING:
    from .runtime import KmeSettings

DEFAULT_DATA = Path("qsecret-kme")

PAIR_EPILOG = f"""\
example:
  qsecret kme pair --data ./kme            # starts both KMEs and the link; leave it running
  # in another terminal, as SAE {SAE_A} (master) ask KME A for a key shared with {SAE_B}:
  curl --cacert kme/pki/ca.pem --cert kme/pki/sae/{SAE_A}.pem --key kme/pki/sae/{SAE_A}.key \\
       'https://127.0.0.1:{DEFAULT_PORT_A}/api/v1/keys/{SAE_B}/enc_keys?number=1'
  # then as {SAE_B} (slave) fetch the same key from KME B by its key_ID:
  curl --cacert kme/pki/ca.pem --cert kme/pki/sae/{SAE_B}.pem --key kme/pki/sae/{SAE_B}.key \\
       'https://127.0.0.1:{DEFAULT_PORT_B}/api/v1/keys/{SAE_A}/dec_keys?key_ID=KEY_ID'
"""

SERVE_EPILOG = f"""\
example (two terminals, or two laptops sharing a copy of DIR/pki):
  qsecret kme pki init --dir ./kme/pki --hostname 192.168.1.20 --hostname 192.168.1.21
  qsecret kme serve --role bob   --data ./kme --port {DEFAULT_PORT_B} \\
      --peer-url https://127.0.0.1:{DEFAULT_PORT_A} --link-port {DEFAULT_LINK_PORT}
  qsecret kme serve --role alice --data ./kme --port {DEFAULT_PORT_A} \\
      --peer-url https://127.0.0.1:{DEFAULT_PORT_B} --link-host 127.0.0.1
bob listens for the link, alice connects to it; alice's KME allocates keys to SAE pairs
and tells bob's KME over HTTPS (mutual TLS with the KME certificates).
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    kme = subparsers.add_parser(
        "kme",
        help="run QKD key management entities (ETSI GS QKD 014 key delivery)",
        description=(
            "Key Management Entities hold the keys a QKD link produces and hand them to "
            "applications (SAEs) through the ETSI GS QKD 014 REST API over HTTPS with "
            "client certificates. Start with 'qsecret kme pair --help'."
        ),
    )
    sub = kme.add_subparsers(dest="kme_command", metavar="SUBCOMMAND")
    kme.set_defaults(func=lambda args: _help(kme))

    pair = sub.add_parser(
        "pair",
        help="two KMEs and an emulated QKD link between them, in one process",
        description=(
            "Start KME A and KME B, each with its own HTTPS port, linked by an emulated "
            "decoy-state BB84 link whose keys fill both pools. On first run a PKI is created "
            f"under DATA/pki with certificates for SAEs {SAE_A} and {SAE_B}. Prints the curl "
            "command to fetch a key, then a status line (pool level, key rate, QBER, aborts)."
        ),
        epilog=PAIR_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(pair)
    pair.add_argument("--port-a", type=int, default=DEFAULT_PORT_A,
                      help=f"HTTPS port of KME A ({KME_A}) (default {DEFAULT_PORT_A}; 0 = any)")
    pair.add_argument("--port-b", type=int, default=DEFAULT_PORT_B,
                      help=f"HTTPS port of KME B ({KME_B}) (default {DEFAULT_PORT_B}; 0 = any)")
    pair.add_argument("--lanes", type=int, default=1, metavar="N",
                      help="post-process N blocks at once, each in a worker process of its "
                           "own (one core each; keys reach both pools in a fixed order, so "
                           "--seed still reproduces a run). Default 1: one block at a time, "
                           "on a thread of this process")
    pair.set_defaults(func=_run_pair)

    serve = sub.add_parser(
        "serve",
        help="one KME, linked to its peer KME over TCP (two terminals or two laptops)",
        description=(
            "Run one KME. The QKD link to the peer runs over TCP: --role bob listens on "
            "--link-port, --role alice connects to --link-host:--link-port. The two KMEs also "
            "talk HTTPS to each other (--peer-url) to agree which keys went to which SAEs. "
            "Both need the same PKI directory (DATA/pki, created on first run; copy it to the "
            "second machine) including its link.psk."
        ),
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(serve)
    serve.add_argument("--topology", metavar="FILE|NAME",
                       help="run one node of a QKD network: a topology TOML file or a "
                            "built-in (pair, metro, backbone); needs --node. The node's "
                            "address, its links' ports and its SAEs come from the topology")
    serve.add_argument("--node", help="with --topology: which node this process runs")
    serve.add_argument("--role", choices=["alice", "bob"],
                       help="without --topology: alice connects the link and allocates "
                            "keys; bob listens")
    serve.add_argument("--kme-id", help=f"this KME's ID (default {KME_A} / {KME_B} by role)")
    serve.add_argument("--peer-kme-id", help="the peer KME's ID (default: the other role's)")
    serve.add_argument("--port", type=int,
                       help=f"HTTPS port (default {DEFAULT_PORT_A} alice, {DEFAULT_PORT_B} bob)")
    serve.add_argument("--peer-url",
                       help="the peer KME's base URL (default https://127.0.0.1:<other port>)")
    serve.add_argument("--link-host", default=DEFAULT_HOST,
                       help="alice: host to connect the link to; bob: address to listen on "
                            "(default 127.0.0.1)")
    serve.add_argument("--link-port", type=int, default=DEFAULT_LINK_PORT,
                       help=f"TCP port of the QKD link (default {DEFAULT_LINK_PORT})")
    serve.set_defaults(func=_run_serve)

    status = sub.add_parser(
        "status",
        help="show a running KME's pool level, key rate, QBER and aborts",
        description="Ask a running KME for its figures (GET /kme/v1/stats; no key material).",
    )
    where = status.add_mutually_exclusive_group()
    where.add_argument("--url", default=f"https://127.0.0.1:{DEFAULT_PORT_A}",
                       help=f"KME base URL (default https://127.0.0.1:{DEFAULT_PORT_A})")
    where.add_argument("--port", type=int,
                       help="a KME on this machine: the same as --url https://127.0.0.1:PORT "
                            "(the --port it was served on)")
    status.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="data directory holding pki/ (default ./qsecret-kme)")
    status.add_argument("--sae", default=SAE_A,
                        help=f"which SAE certificate from DATA/pki to present (default {SAE_A})")
    status.add_argument("--ca", type=Path, help="CA certificate (overrides DATA/pki/ca.pem)")
    status.add_argument("--cert", type=Path, help="client certificate (overrides --sae)")
    status.add_argument("--key", type=Path, help="client private key (overrides --sae)")
    status.add_argument("--watch", type=float, metavar="SECONDS",
                        help="repeat every SECONDS until Ctrl+C")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(func=_run_status)

    pki = sub.add_parser(
        "pki",
        help="create the CA and the KME / SAE certificates",
        description=(
            "Manage a PKI directory: ca.pem/ca.key, kme/<KME_ID>.pem/.key, "
            "sae/<SAE_ID>.pem/.key and link.psk. An SAE is identified by its certificate "
            "(CN = SAE_ID)."
        ),
    )
    pki_sub = pki.add_subparsers(dest="pki_command", metavar="ACTION")
    pki.set_defaults(func=lambda args: _help(pki))
    init = pki_sub.add_parser("init", help="create the CA, KME and SAE certificates, link PSK")
    init.add_argument("--dir", type=Path, default=DEFAULT_DATA / "pki",
                      help="PKI directory (default ./qsecret-kme/pki)")
    init.add_argument("--kme", action="append", default=None, metavar="KME_ID",
                      help=f"KME certificate to issue (repeatable; default {KME_A} and {KME_B})")
    init.add_argument("--sae", action="append", default=None, metavar="SAE_ID",
                      help=f"SAE certificate to issue (repeatable; default {SAE_A} and {SAE_B})")
    init.add_argument("--hostname", action="append", default=[], metavar="NAME_OR_IP",
                      help="extra DNS name or IP the KME certificates are valid for")
    init.set_defaults(func=_run_pki_init)
    issue = pki_sub.add_parser("issue-sae", help="issue a client certificate for one more SAE")
    issue.add_argument("sae_id", metavar="SAE_ID")
    issue.add_argument("--dir", type=Path, default=DEFAULT_DATA / "pki",
                       help="PKI directory (default ./qsecret-kme/pki)")
    issue.set_defaults(func=_run_issue_sae)
    issue_kme = pki_sub.add_parser("issue-kme", help="issue a server certificate for a KME")
    issue_kme.add_argument("kme_id", metavar="KME_ID")
    issue_kme.add_argument("--dir", type=Path, default=DEFAULT_DATA / "pki",
                           help="PKI directory (default ./qsecret-kme/pki)")
    issue_kme.add_argument("--hostname", action="append", default=[], metavar="NAME_OR_IP",
                           help="extra DNS name or IP the certificate is valid for")
    issue_kme.set_defaults(func=_run_issue_kme)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="directory for the PKI and the key pools (default ./qsecret-kme)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address the HTTPS API listens on (default 127.0.0.1)")
    parser.add_argument("--hostname", action="append", default=[], metavar="NAME_OR_IP",
                        help="extra name/IP for the KME certificates (when first created)")
    parser.add_argument("--max-keys", type=int, default=100_000,
                        help="max_key_count: the link fills the pool up to this many free "
                             "256-bit keys; keys bound to SAEs come on top, capped by the "
                             "quotas below (default 100000)")
    parser.add_argument("--redelivery-grace", type=float, default=DEFAULT_REDELIVERY_GRACE_S,
                        metavar="SECONDS",
                        help="a key handed out by dec_keys stays re-servable to the same SAE "
                             "(and no other) this long, so a client killed before saving it "
                             "can fetch it again; 0 = strict once-only ETSI delivery "
                             f"(default {DEFAULT_REDELIVERY_GRACE_S:g})")
    parser.add_argument("--max-bound-per-pair", type=int, metavar="N",
                        help="at most N pool keys (256 bits) bound to one master->slave SAE "
                             "pair and not yet fetched; more is refused with 503 "
                             f"(default --max-keys / {POOL_SHARE_PER_PAIR})")
    parser.add_argument("--max-bound-per-master", type=int, metavar="N",
                        help="at most N pool keys bound for one master SAE over all its slaves "
                             f"and not yet fetched (default --max-keys / {POOL_SHARE_PER_MASTER})")
    parser.add_argument("--binding-ttl", type=float,
                        default=DEFAULT_BINDING_TTL_S / 60, metavar="MINUTES",
                        help="bound keys not fetched this long are destroyed at both KMEs "
                             f"(default {DEFAULT_BINDING_TTL_S / 60:g})")
    parser.add_argument("--max-key-per-request", type=int, default=Limits.max_key_per_request,
                        help=f"ETSI max_key_per_request (default {Limits.max_key_per_request})")
    parser.add_argument("--link", choices=["emulated", "none"], default="emulated",
                        help="emulated: run the BB84 link emulator (default); none: serve keys "
                             "put into the pools by other means")
    parser.add_argument("--km", type=float, help="fibre length in km (default: emulator's)")
    parser.add_argument("--frame-bits", type=int, metavar="BITS",
                        help="reconciliation frame per block, 1024..4194304 sifted bits "
                             "(default: emulator's, 131072); both KMEs of a link must agree")
    parser.add_argument("--eve-fraction", type=float,
                        help="fraction of pulses an eavesdropper intercepts and resends "
                             "(0..1; 1 gives ~25%% QBER and no key)")
    parser.add_argument("--pns", action="store_true",
                        help="the eavesdropper also runs a photon-number-splitting attack")
    parser.add_argument("--seed", type=int,
                        help="seed the emulated link (physics and public choices, not the "
                             "PSK): runs with the same seed hand out the same keys and "
                             "key_IDs. Tests and demos only: the seed gives the keys away")
    parser.add_argument("--keys-ready", type=int, default=0, metavar="N",
                        help="print 'keys ready' once the pools hold N free keys each, for "
                             "scripts that take keys as soon as they start (default 0: never)")
    parser.add_argument("--status-interval", type=float, default=2.0, metavar="SECONDS",
                        help="print a status line every SECONDS (0 = never; default 2)")
    parser.add_argument("--plain-http", action="store_true",
                        help="DEBUGGING ONLY: no TLS, SAEs named by the X-SAE-ID header; "
                             "refused unless --host is loopback")


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _fail(message: str) -> int:
    print(f"qsecret kme: {message}", file=sys.stderr)
    return 2


def _settings(args: argparse.Namespace, *, lanes: int = 1) -> KmeSettings:
    from .runtime import KmeSettings  # the servers load only when a command runs

    return KmeSettings(
        data=args.data,
        host=args.host,
        plain_http=args.plain_http,
        max_key_count=args.max_keys,
        hostnames=args.hostname,
        link=args.link == "emulated",
        link_options={"km": args.km, "eve_fraction": args.eve_fraction, "pns": args.pns,
                      "seed": args.seed, "frame_bits": args.frame_bits},
        lanes=lanes,
        status_interval_s=args.status_interval,
        keys_ready=args.keys_ready,
        limits=Limits(max_key_per_request=args.max_key_per_request),
        redelivery_grace_s=args.redelivery_grace,
        binding_limits=_binding_limits(args),
    )


def _binding_limits(args: argparse.Namespace) -> BindingLimits:
    """The quotas and lifetime of bound-but-unfetched keys; ValueError naming a bad flag."""
    for flag, value in (("--max-bound-per-pair", args.max_bound_per_pair),
                        ("--max-bound-per-master", args.max_bound_per_master)):
        if value is not None and value <= 0:
            raise ValueError(f"{flag} must be a positive number of pool keys (got {value})")
    if not args.binding_ttl > 0:  # also refuses NaN
        raise ValueError(f"--binding-ttl must be more than 0 minutes (got {args.binding_ttl})")
    return BindingLimits.for_pool(args.max_keys, per_pair=args.max_bound_per_pair,
                                  per_master=args.max_bound_per_master,
                                  ttl_s=args.binding_ttl * 60)


def _run(coro: object) -> int:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except (PkiError, ValueError, OSError, ImportError) as exc:
        return _fail(str(exc))


def _run_pair(args: argparse.Namespace) -> int:
    from .runtime import run_pair

    try:
        settings = _settings(args, lanes=args.lanes)
    except ValueError as exc:
        return _fail(str(exc))
    return _run(run_pair(settings, port_a=args.port_a, port_b=args.port_b))


def _run_serve(args: argparse.Namespace) -> int:
    if args.topology is not None:
        return _run_network_node(args)
    if args.node is not None:
        return _fail("--node needs --topology (which network the node belongs to)")
    if args.role is None:
        return _fail("serve needs --role alice|bob (a KME pair over TCP), or --topology "
                     "and --node (one node of a network)")
    from .runtime import run_serve

    alice = args.role == "alice"
    kme_id = args.kme_id or (KME_A if alice else KME_B)
    peer_kme_id = args.peer_kme_id or (KME_B if alice else KME_A)
    port = args.port if args.port is not None else (DEFAULT_PORT_A if alice else DEFAULT_PORT_B)
    peer_url = args.peer_url or (
        f"https://127.0.0.1:{DEFAULT_PORT_B if alice else DEFAULT_PORT_A}"
    )
    if args.plain_http and peer_url.startswith("https://") and not args.peer_url:
        peer_url = "http://" + peer_url.removeprefix("https://")
    try:
        settings = _settings(args)
    except ValueError as exc:
        return _fail(str(exc))
    return _run(run_serve(
        settings, role=args.role, kme_id=kme_id, peer_kme_id=peer_kme_id, port=port,
        peer_url=peer_url, link_host=args.link_host, link_port=args.link_port,
    ))


def _run_network_node(args: argparse.Namespace) -> int:
    from keysource.network.topology import TopologyError, load

    from .network_runtime import run_network_node

    pair_only = [flag for flag, value in (
        ("--role", args.role), ("--kme-id", args.kme_id), ("--peer-kme-id", args.peer_kme_id),
        ("--port", args.port), ("--peer-url", args.peer_url), ("--km", args.km),
        ("--eve-fraction", args.eve_fraction), ("--pns", args.pns or None),
    ) if value is not None]
    if pair_only:
        return _fail(f"{', '.join(pair_only)}: not with --topology (the topology gives every "
                     "node's address and every link's length and eavesdropper)")
    if not args.node:
        return _fail("--topology needs --node NAME (which node this process runs)")
    try:
        topology = load(args.topology)
        topology.node(args.node)
        settings = _settings(args)
    except (TopologyError, ValueError) as exc:
        return _fail(str(exc))
    listen = args.host if args.host != DEFAULT_HOST else None
    return _run(run_network_node(settings, topology, args.node, listen_host=listen))


def _run_status(args: argparse.Namespace) -> int:
    from .runtime import dump_json, fetch_stats

    if args.port is not None:
        args.url = f"https://127.0.0.1:{args.port}"
    pki = Pki(args.data / "pki")
    try:
        sae = pki.sae(args.sae)
    except PkiError as exc:
        return _fail(str(exc))
    ca = args.ca or pki.ca_cert
    cert = args.cert or sae.cert
    key = args.key or sae.key
    try:
        while True:
            try:
                stats = fetch_stats(args.url, ca=ca, cert=cert, key=key, sae_id=args.sae)
            except Exception as exc:  # report any failure as one line, keep watching
                line = f"cannot read {args.url}: {type(exc).__name__}: {exc}"
                if not args.watch:
                    return _fail(line)
                print(line, flush=True)
            else:
                print(dump_json(stats) if args.json else _format_stats(stats), flush=True)
            if not args.watch:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _format_stats(stats: dict[str, Any]) -> str:
    if "links" in stats["pool"]:  # a node of a network: one line per link
        from .network_runtime import format_network_stats

        return format_network_stats(stats)
    from .runtime import format_stats

    return format_stats(stats)


def _run_pki_init(args: argparse.Namespace) -> int:
    from .runtime import _make_psk

    pki = Pki(args.dir)
    try:
        created = pki.ensure(
            kme_ids=args.kme or [KME_A, KME_B],
            sae_ids=args.sae or [SAE_A, SAE_B],
            hostnames=args.hostname,
            psk=_make_psk(),
        )
    except PkiError as exc:
        return _fail(str(exc))
    for path in created:
        print(f"created {path}")
    if not created:
        print(f"nothing to do: everything already exists in {args.dir}")
    return 0


def _run_issue_sae(args: argparse.Namespace) -> int:
    pki = Pki(args.dir)
    try:
        if pki.sae(args.sae_id).cert.exists():
            return _fail(f"SAE {args.sae_id} already has a certificate in {args.dir}")
        paths = pki.issue_sae(args.sae_id)
    except PkiError as exc:
        return _fail(str(exc))
    print(f"created {paths.cert}\ncreated {paths.key}")
    return 0


def _run_issue_kme(args: argparse.Namespace) -> int:
    pki = Pki(args.dir)
    try:
        paths = pki.issue_kme(args.kme_id, args.hostname)
    except PkiError as exc:
        return _fail(str(exc))
    print(f"created {paths.cert}\ncreated {paths.key}")
    return 0
