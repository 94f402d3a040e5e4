"""Bounded rings of log lines -- a backend's output, or one of the daemon's own level logs -- with sequence
numbers and timestamps.

The supervisor appends every stdout/stderr line of its child to that backend's ring; the logging handler of
`swarmd.logs` appends the daemon's own records to its level rings; the log routes read them.

Sequence numbers come from ONE counter shared by every ring of the process, as SwarmUI's log trackers share
one: each line of any log takes the next number. So the numbers of one ring increase but are not
contiguous, they never repeat (also across restarts of a backend: its ring is kept), a client can ask a
ring for "lines after N" and never see one twice, and `last_sequence_id()` is the newest line of any log.

Threads: backends' rings are appended on the trio thread; the level rings also from worker threads (a
record logged in `trio.to_thread`). One lock (re-entrant, held only for O(1) work on append and a copy on
read) orders numbering and appending, so every ring holds its lines in sequence order. Followers
(`wait_after`) run on the trio loop; an append from another thread wakes them through the loop's
`TrioToken.run_sync_soon`, which never blocks.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import trio

RING_LINES = 1000

#: Guards the counter and every ring's deque (an RLock: a record logged while it is held -- by a garbage
#: collector callback, say -- must not deadlock the thread).
_lock = threading.RLock()
_last_seq = 0


def last_sequence_id() -> int:
    """The sequence number of the newest line of any ring (0 before the first)."""
    return _last_seq


@contextmanager
def consistent() -> Iterator[None]:
    """Hold the rings still: reads made inside see no line appended by another thread meanwhile (for an
    answer whose `last_sequence_id` must cover every line it holds)."""
    with _lock:
        yield


@dataclass(frozen=True, slots=True)
class LogLine:
    seq: int
    time: float  # seconds since the epoch
    stream: str  # "stdout" | "stderr" | "swarmd" (the daemon's own records, or its notes about a backend)
    text: str


class OutputRing:
    """The last `size` lines of one log. Appended by its owner (a backend's supervisor, or the daemon's
    logging handler); read by anyone."""

    def __init__(self, size: int = RING_LINES) -> None:
        self._lines: deque[LogLine] = deque(maxlen=size)
        self._seq = 0  # the number of this ring's last line
        self._changed: trio.Event | None = None  # made by the first follower, set by the next append
        self._token: trio.lowlevel.TrioToken | None = None  # the followers' loop
        self._loop_thread = 0

    @property
    def last_seq(self) -> int:
        """The sequence number of this ring's last line (0 before the first)."""
        return self._seq

    def append(self, stream: str, text: str, when: float | None = None) -> LogLine:
        """Add a line (timestamped now, or at `when`) with the next number of the shared counter. Never
        blocks; safe from any thread."""
        global _last_seq
        stamp = time.time() if when is None else when
        with _lock:
            _last_seq += 1
            line = LogLine(_last_seq, stamp, stream, text)
            self._lines.append(line)
            self._seq = line.seq
            changed, self._changed = self._changed, None
        if changed is not None:  # wake the followers
            if threading.get_ident() == self._loop_thread:
                changed.set()
            elif self._token is not None:
                try:
                    self._token.run_sync_soon(changed.set)
                except trio.RunFinishedError:
                    pass
        return line

    def since(self, seq: int) -> list[LogLine]:
        """Lines with a sequence number greater than `seq`, oldest first."""
        if seq >= self._seq:
            return []
        with _lock:
            if not self._lines or seq < self._lines[0].seq:
                return list(self._lines)
            newer: list[LogLine] = []
            for line in reversed(self._lines):  # a poll asks for a few new lines: walk back from the end
                if line.seq <= seq:
                    break
                newer.append(line)
        newer.reverse()
        return newer

    def tail(self, count: int) -> list[LogLine]:
        if count <= 0:
            return []
        with _lock:
            return list(self._lines)[-count:]

    def __len__(self) -> int:
        return len(self._lines)

    async def wait_after(self, seq: int) -> None:
        """Return once a line with a sequence number greater than `seq` exists (on the trio loop)."""
        while True:
            with _lock:
                if self._seq > seq:
                    return
                if self._changed is None:
                    self._changed = trio.Event()
                self._token = trio.lowlevel.current_trio_token()
                self._loop_thread = threading.get_ident()
                changed = self._changed
            await changed.wait()
