"""A process that takes keys from a pool in a loop and prints each key_ID it got.

Usage: python -m tests.kme._pool_worker POOL_DB PER_TAKE [MAX_TAKES]
Prints ``key_ID`` lines (flushed after each take) and ``done`` when the pool is empty.
"""

from __future__ import annotations

import os
import sys

from keysource.kme.pool import KeyPool, PoolExhausted


def main() -> int:
    path, per_take = sys.argv[1], int(sys.argv[2])
    max_takes = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000_000
    with KeyPool(path) as pool:
        for _ in range(max_takes):
            try:
                keys = pool.take_free(per_take, sae="worker")
            except PoolExhausted:
                break
            # One write() of less than PIPE_BUF bytes: the reader sees a take whole or not at all.
            os.write(1, "".join(f"{k.key_ID}\n" for k in keys).encode())
    os.write(1, b"done\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
