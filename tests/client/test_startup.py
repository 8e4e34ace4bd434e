"""What 'qsecret' costs before a command runs: its parser must not import the messenger.

'qsecret send-file' hashes the files while the profile unlocks and the messenger is imported;
that only overlaps if building the parser left those imports for later.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["client.messenger.service", "client.messenger.profile", "client.transfer.receiver",
         "client.transfer.keys", "httpx", "textual",
         "keysource.kme.client", "numpy"]


def test_building_the_parser_leaves_the_messenger_unimported() -> None:
    code = ("import json, sys; from client.cli import build_parser; build_parser(); "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout) == []
