"""The cyclic garbage collector is paused while 'qsecret send-file' and 'receive-files' start
(client/cli/entry.py, PAUSE_GC_AT_START) and resumes, with the start-up's objects frozen,
once the messenger is built, or at the latest when the command returns, also on an error.
Every other command runs with the collector as the interpreter has it."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json
from client.cli import entry
from client.cli.errors import CliError
seen = {}
def run(args, parser):
    during = gc.isenabled()
    if args.command == "receive-files":
        raise CliError("no profile")  # fails before its start-up is over
    entry.startup_done()
    seen[args.command] = [during, gc.isenabled(), gc.get_freeze_count() > 0]
    return 0
entry.run = run
entry.main(["doctor"])
frozen_before = gc.get_freeze_count()
entry.main(["send-file", "bob", "x"])
try:
    entry.main(["receive-files"])
except CliError:
    pass
seen["after an error"] = gc.isenabled()
print(json.dumps([frozen_before, seen]))
"""


def test_the_collector_pauses_for_the_transfer_commands_start_only() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=60, check=True)
    frozen_before, seen = json.loads(out.stdout)
    assert frozen_before == 0  # 'doctor' froze nothing
    assert seen == {"doctor": [True, True, False],
                    "send-file": [False, True, True],
                    "after an error": True}

