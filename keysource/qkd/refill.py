"""When a link starts its next block: whenever the pools have room, but not for a trickle.

A block costs the emulator a core for a third of a second or so and yields a block's worth of
keys (about 150 with the default parameters). Once the pools are full, a client taking a few
keys out would otherwise start a whole block at once, and the pools would keep only the few
keys that fit and discard the rest. Real QKD electronics do not share the host's CPU; this
emulator does, with the messengers and the relay beside it. So after the pools fill up, the
link waits until they have room for a block's yield (as the last good block produced), or for
half the room it has ever seen, whichever is smaller. Until the pools first fill, the link
runs block after block as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from .protocol import KEY_BYTES, BlockReport


@dataclass
class RefillGate:
    """Decides, from the pools' free room, whether the link should run another block now."""

    block_keys: int = 0  # keys the last good block produced before the pools' room cut it
    most_room: int = 0  # the most room seen: the pools' capacity when they started empty
    filled: bool = False  # the pools were full and have not had a block's room since

    def ready(self, room: int) -> bool:
        """Whether to run a block with ``room`` keys free in the fuller pool."""
        self.most_room = max(self.most_room, room)
        if room <= 0:
            self.filled = True
            return False
        if self.filled and room < min(self.block_keys, self.most_room // 2):
            return False
        self.filled = False
        return True

    def on_report(self, report: BlockReport) -> None:
        """Learn a block's natural yield from its report (aborted blocks teach nothing)."""
        if not report.aborted and report.secret_bits > 0:
            keys_bits = report.secret_bits - report.auth_bits_refilled
            self.block_keys = max(0, keys_bits // (8 * KEY_BYTES))
