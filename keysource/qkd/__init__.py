"""Emulated decoy-state BB84 QKD link: the source of the "quantum" in every qsecret key.

Public API (used by keysource.kme to fill its key pools):

- ``LinkParams``: physics and post-processing parameters (realistic 25 km metro defaults).
- ``BlockReport``: what happened to one block (QBER, key bits, aborts, authentication use).
- ``KeyBatch``: list of (key_ID UUID string, 32-byte key), identical and in the same order at
  both ends.
- ``run_pair_link(params, on_keys_a=, on_keys_b=, on_report=, stop=, room=)``: both ends here.
- ``run_lanes(params, lanes, ...)``: the same with ``lanes`` blocks at once, in worker processes.
- ``run_link_endpoint(role, host=, port=, params=, psk=, on_keys=, on_report=, stop=, room=)``:
  one end over TCP (Alice connects, Bob listens); with ``state_store=`` (durable.py) its state
  is stored atomically with its keys after every step, so it survives ``kill -9``.
- ``make_psk()``: the initial pre-shared authentication secret of a new link.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keysource.lazy import lazy_getattr

# Loaded on first use, so the ``qsecret`` command (which registers ``qsecret eve``) does not
# pay for numpy and the whole emulator on every start.
_HOME = {
    "AuthError": ".auth", "AuthKeyExhausted": ".auth", "make_psk": ".auth",
    "LinkConfigError": ".net", "run_link_endpoint": ".net",
    "PairLink": ".pair", "run_pair_link": ".pair", "run_lanes": ".lanes",
    "LinkParams": ".params",
    "BlockReport": ".protocol", "KeyBatch": ".protocol",
}

if TYPE_CHECKING:
    from .auth import AuthError, AuthKeyExhausted, make_psk
    from .lanes import run_lanes
    from .net import LinkConfigError, run_link_endpoint
    from .pair import PairLink, run_pair_link
    from .params import LinkParams
    from .protocol import BlockReport, KeyBatch


__getattr__ = lazy_getattr(__name__, _HOME)


__all__ = [
    "AuthError",
    "AuthKeyExhausted",
    "BlockReport",
    "KeyBatch",
    "LinkConfigError",
    "LinkParams",
    "PairLink",
    "make_psk",
    "run_lanes",
    "run_link_endpoint",
    "run_pair_link",
]
