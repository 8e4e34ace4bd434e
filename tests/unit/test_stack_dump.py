"""``kill -USR1`` on a qsecret process prints its threads and asyncio tasks, and it goes on."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import asyncio, os, signal
from client.cli.entry import dump_stacks_on_sigusr1

dump_stacks_on_sigusr1()

async def parked_forever_in_this_task():
    await asyncio.Event().wait()

async def main():
    task = asyncio.create_task(parked_forever_in_this_task())
    await asyncio.sleep(0)
    os.kill(os.getpid(), signal.SIGUSR1)
    await asyncio.sleep(0)
    task.cancel()
    print("still running")

asyncio.run(main())
"""


def test_usr1_dumps_threads_and_tasks_and_the_process_carries_on() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "still running"
    assert "Current thread" in done.stderr  # faulthandler's dump of the main thread
    assert "parked_forever_in_this_task" in done.stderr  # the asyncio task's stack
