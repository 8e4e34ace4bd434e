"""``qsecret kme pair --keys-ready N``: a line to wait for before taking keys.

The KMEs listen ("ready") long before the link has filled their pools; on a busy machine the
low-priority link thread may need many seconds for its first block. Whatever starts taking
keys at once (the end-to-end stack, scripts) waits for "keys ready" instead of racing it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from keysource.kme.pool import KeyPool
from keysource.kme.runtime import KME_A, KME_B, pool_path

from .conftest import qsecret_cmd, start_pair

WANTED = 200  # more than one block yields (~150): the line has to wait for a second block


@pytest.mark.slow
def test_keys_ready_comes_once_both_pools_hold_the_keys(tmp_path: Path) -> None:
    pair = start_pair(tmp_path, "--link", "emulated", "--seed", "5",
                      "--keys-ready", str(WANTED))
    try:
        line = pair.process.wait_for(
            rf"^keys ready: {KME_A} (\d+) {KME_B} (\d+) free keys \(wanted {WANTED}\)$",
            timeout_s=300)
        held = {}
        for kme_id in (KME_A, KME_B):
            with KeyPool(pool_path(tmp_path, kme_id)) as pool:
                held[kme_id] = pool.free_count()
    finally:
        pair.process.stop()
    assert int(line.group(1)) >= WANTED and int(line.group(2)) >= WANTED
    # Nobody took keys, and the pools only grow: they held WANTED when the line was printed.
    assert min(held.values()) >= WANTED, held
    assert sum("keys ready" in text for text in pair.process.lines) == 1


@pytest.mark.parametrize(("args", "error"), [
    (["--link", "none", "--keys-ready", "5"], "--keys-ready needs the emulated link"),
    (["--max-keys", "100", "--keys-ready", "101"], "exceeds the pools' size"),
    (["--keys-ready", "-1"], "--keys-ready must be >= 0"),
    (["--seed", "-3"], "seed must be >= 0"),
    (["--frame-bits", "100"], "frame_bits must be in [1024, 4194304]"),
])
def test_bad_link_options_are_refused_before_anything_is_created(
    tmp_path: Path, args: list[str], error: str
) -> None:
    result = subprocess.run(
        qsecret_cmd("kme", "pair", "--data", str(tmp_path), "--port-a", "0", "--port-b", "0",
                    *args),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert error in result.stderr
    assert not (tmp_path / "pki").exists(), "refused before anything was created"
