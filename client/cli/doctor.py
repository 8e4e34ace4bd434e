"""``qsecret doctor``: which backends and algorithms are usable here, and why not; with
``--store``, whether the profile's sealed store is intact and which rows are damaged."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

from client import __version__
from keysource import pq

from .errors import EXIT_DAMAGED, EXIT_FAILED
from .help import HelpFormatter, examples


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "doctor",
        help="show versions, crypto backends and available algorithms",
        description=(
            "Report the Python and library versions, which crypto backends are usable "
            "(openssl always; liboqs when its shared library is installed, see "
            "OQS_INSTALL_PATH) and the algorithms each offers."
        ),
        epilog=examples("qsecret doctor", "OQS_INSTALL_PATH=/opt/liboqs qsecret doctor --json",
                        "qsecret doctor --store --data ~/qsecret-bob"),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.add_argument("--store", action="store_true",
                        help="check the profile's store instead (read-only; needs the "
                             "passphrase): SQLite integrity, the passphrase records and every "
                             "sealed row; exit status 3 if anything is damaged")
    parser.add_argument("--data", type=Path, help="profile directory ($QSECRET_DATA_DIR)")
    # accepted as by every profile command (scripts pass them all); --store needs no network
    parser.add_argument("--relay", dest="relay_url", help=argparse.SUPPRESS)
    parser.add_argument("--kme", dest="kme_url", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def report() -> dict[str, Any]:
    backends = [pq.backend_status(name) for name in pq.BACKENDS]
    return {
        "qsecret": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backends": [
            {
                "name": b.name,
                "available": b.available,
                "detail": b.detail,
                "kems": list(b.kems),
                "signatures": list(b.signatures),
            }
            for b in backends
        ],
        "preferred": {alg: backends_[0] for alg, backends_ in pq.available_kems().items()},
    }


def run(args: argparse.Namespace) -> int:
    if args.store:
        return run_store(args)
    data = report()
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
        return 0
    print(f"qsecret {data['qsecret']} on Python {data['python']} ({data['platform']})")
    for backend in data["backends"]:
        mark = "ok " if backend["available"] else "-- "
        print(f"{mark} backend {backend['name']}: {backend['detail']}")
        if backend["available"]:
            print(f"      KEMs:       {_short(backend['kems'])}")
            print(f"      signatures: {_short(backend['signatures'])}")
    ml_kem = data["preferred"].get("ML-KEM-768")
    print(f"ML-KEM-768 is served by: {ml_kem}")
    return 0


def _short(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … (+{len(names) - limit} more)" if len(names) > limit else "")


def run_store(args: argparse.Namespace) -> int:
    """Check the profile's store without writing to it; list every damaged row."""
    from client.messenger.unlock import store_path
    from client.store.check import inspect_store

    from .session import config_for, passphrase

    path = store_path(config_for(args))
    found = inspect_store(passphrase(), path)
    status = 0 if found.healthy else EXIT_FAILED if found.wrong_passphrase else EXIT_DAMAGED
    if args.json:
        json.dump({"store": str(path), "fatal": found.fatal, "rows": found.counts,
                   "damaged": [{"table": d.table, "row": d.row, "what": d.what}
                               for d in found.rows]}, sys.stdout, indent=2, default=str)
        print()
        return status
    if found.fatal is not None:
        print(f"qsecret doctor: {found.fatal}", file=sys.stderr)
        return status
    total = sum(found.counts.values())
    print(f"profile store {path}: SQLite integrity ok, passphrase records ok, "
          f"{total} sealed rows checked")
    for damage in found.rows:
        print(f"  damaged: {damage.table:9} row {damage.row}: {damage.what}")
    if found.rows:
        tables = sorted({d.table for d in found.rows})
        per = ", ".join(f"{t} {sum(d.table == t for d in found.rows)}" for t in tables)
        if any(d.fatal for d in found.rows):
            outcome = "the profile cannot be used until it is restored"
        else:
            outcome = "each is skipped, the rest of the profile works"
        print(f"{len(found.rows)} damaged row(s) ({per}); {outcome}; a backup made before "
              "the damage has them ('qsecret restore FILE')")
    else:
        print("no damaged rows")
    return status
