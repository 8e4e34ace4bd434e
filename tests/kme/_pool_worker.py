"""A process that takes keys from a pool in a loop and prints each key_ID it got.

Usage: python -m tests.kme._pool_worker POOL_DB PER_TAKE [MASTER]
Keys leave the pool the way enc_keys hands them to a master at the allocator: bound to
(MASTER, s), acknowledged, then taken. It first acknowledges bindings a killed worker left
unacknowledged (as the allocator's sync loop does once the peer holds them) and takes keys
already bound to MASTER before binding free ones, so nothing a killed worker bound is stranded.
Prints ``key_ID`` lines (flushed after each take) and ``done`` when the pool is empty.
"""

from __future__ import annotations

import os
import sys
import uuid

from keysource.kme.pool import KeyPool, PoolExhausted

SLAVE = "s"


def main() -> int:
    path, per_take = sys.argv[1], int(sys.argv[2])
    master = sys.argv[3] if len(sys.argv) > 3 else "worker"
    with KeyPool(path) as pool:
        for binding, _created in pool.unacked_bindings():
            pool.mark_acked(binding.binding_id)
        while True:
            ready = pool.ready_count(master, SLAVE, 256)
            try:
                if ready < per_take:
                    binding = pool.bind(binding_id=str(uuid.uuid4()), master_SAE_ID=master,
                                        slave_SAE_ID=SLAVE, master_kme="kme-a",
                                        local_kme="kme-a", sizes=[256] * (per_take - ready))
                    pool.mark_acked(binding.binding_id)
                keys = pool.take_bound_for_master(master, SLAVE, 256, per_take)
            except PoolExhausted:
                break
            # One write() of less than PIPE_BUF bytes: the reader sees a take whole or not at all.
            os.write(1, "".join(f"{k.key_ID}\n" for k in keys).encode())
    os.write(1, b"done\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
