"""``qsecret send-file``'s first step: start listing the files, then load the rest.

Walking a folder of many files takes a while, and it is on a transfer's clock: it runs on a
thread while this one imports the messenger and the passphrase KDF runs
(``files.run_send_file``). Nothing is read or hashed before sending (each file is hashed as
it is sent). Nothing here changes interpreter-wide settings (``entry.main`` alone may, see
``SWITCH_INTERVAL_S``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import CliError


def start_send_file(args: argparse.Namespace) -> int:
    """Check the paths, start listing them on a thread, then run the command."""
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise CliError(f"no such file or folder: {', '.join(missing)}")
    from client.transfer import build_manifest
    from client.work import in_background

    listing = in_background(build_manifest, [str(p) for p in args.paths], name="list-files")
    from .files import run_send_file

    return run_send_file(args, listing)
