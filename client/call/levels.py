"""Level meters and mute around a call's sound: what the call screen shows and toggles.

:class:`MeteredSource` and :class:`MeteredSink` wrap any ``client.call.audio`` source or
sink; each frame passing through updates a level in dBFS (RMS of the 20 ms frame, floored
at :data:`SILENCE_DBFS`). A muted source still gives frames, of silence, so the call keeps
its 20 ms pace and the other side hears nothing rather than a gap.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SILENCE_DBFS = -90.0
FULL_SCALE = 32768.0


def level_dbfs(frame: np.ndarray) -> float:
    """RMS level of int16 samples relative to full scale (0 dBFS), floored at -90."""
    if frame.size == 0:
        return SILENCE_DBFS
    rms = math.sqrt(float(np.mean(np.square(frame.astype(np.float64)))))
    if rms <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * math.log10(rms / FULL_SCALE))


class MeteredSource:
    """A source that measures what it gives and can be muted."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.muted = False
        self.level = SILENCE_DBFS

    def read(self) -> np.ndarray | None:
        frame = self.source.read()
        if frame is None:
            return None
        if self.muted:
            frame = np.zeros_like(frame)
        self.level = level_dbfs(frame)
        return frame

    def close(self) -> None:
        self.source.close()


class MeteredSink:
    """A sink that measures what it plays (``sink`` None: measure only, play nothing)."""

    def __init__(self, sink: Any | None) -> None:
        self.sink = sink
        self.level = SILENCE_DBFS

    def write(self, frame: np.ndarray) -> None:
        self.level = level_dbfs(frame)
        if self.sink is not None:
            self.sink.write(frame)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()
