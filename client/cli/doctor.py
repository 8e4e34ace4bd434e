"""``qsecret doctor``: which backends and algorithms are usable here, and why not."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Any

from client import __version__
from keysource import pq

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
        epilog=examples("qsecret doctor", "OQS_INSTALL_PATH=/opt/liboqs qsecret doctor --json"),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print a JSON report")
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
