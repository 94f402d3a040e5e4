"""A bounded ring of a backend's output lines, with sequence numbers and timestamps.

The supervisor appends every stdout/stderr line of its child; the log routes read it. Sequence numbers are
per ring, start at 1 and never repeat (also across restarts of the child), so a client can ask for "lines
after N" and never see one twice.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import trio

RING_LINES = 1000


@dataclass(frozen=True, slots=True)
class LogLine:
    seq: int
    time: float  # seconds since the epoch
    stream: str  # "stdout" | "stderr" | "swarmd" (the supervisor's own notes about this backend)
    text: str


class OutputRing:
    """The last `size` lines of one backend. Owned by that backend's supervisor; read by anyone."""

    def __init__(self, size: int = RING_LINES) -> None:
        self._lines: deque[LogLine] = deque(maxlen=size)
        self._seq = 0
        self._changed = trio.Event()

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(self, stream: str, text: str) -> LogLine:
        self._seq += 1
        line = LogLine(self._seq, time.time(), stream, text)
        self._lines.append(line)
        # Wake followers; a fresh Event for the next line (set() on an Event without waiters is cheap).
        self._changed.set()
        self._changed = trio.Event()
        return line

    def since(self, seq: int) -> list[LogLine]:
        """Lines with a sequence number greater than `seq`, oldest first."""
        if seq >= self._seq:
            return []
        if seq <= 0 or not self._lines or seq < self._lines[0].seq:
            return list(self._lines)
        skip = seq - self._lines[0].seq + 1
        return list(self._lines)[skip:]

    def tail(self, count: int) -> list[LogLine]:
        if count <= 0:
            return []
        return list(self._lines)[-count:]

    def __len__(self) -> int:
        return len(self._lines)

    async def wait_after(self, seq: int) -> None:
        """Return once a line with a sequence number greater than `seq` exists."""
        while self._seq <= seq:
            await self._changed.wait()
