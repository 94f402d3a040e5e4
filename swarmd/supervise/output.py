"""Bounded rings of log lines -- a backend's output, or one of the daemon's own level logs -- with sequence
numbers and timestamps.

The supervisor appends each chunk of its child's stdout/stderr to that backend's ring (`append_lines`: the
complete lines one read delivered, as one text); the logging handler of `swarmd.logs` appends the daemon's
own records to its level rings (`append`: one entry, which may span lines); the log routes read them.

Cost and memory
---------------
A chatty child delivers ~1000 lines per 64 KiB read. A ring stores each chunk as it came -- one text, one
timestamp, one stream, the sequence number of its first line -- so taking it in costs one lock, one clock
read and one deque append whatever the number of lines; `LogLine` objects are made only when someone reads
(a poll of the log routes, an exit's telling line), and only for the lines asked for.

A ring is bounded in lines (`lines`, default `RING_LINES`) AND in bytes (`size`, default `RING_BYTES`, the
UTF-8 length of the text held): the oldest chunks go first; a chunk partly over the line bound keeps its
text but hides its oldest lines (`skip`), so that the bytes counted are the bytes held. A line is at most
`supervise.pipes.MAX_LINE` long (the reader cuts longer ones), so a ring can always keep its last lines.

Sequence numbers come from ONE counter shared by every ring of the process, as SwarmUI's log trackers share
one: each line of any log takes the next number (a chunk of n lines takes n consecutive ones). So the
numbers of one ring increase but are not contiguous, they never repeat (also across restarts of a backend:
its ring is kept), a client can ask a ring for "lines after N" and never see one twice, and
`last_sequence_id()` is the newest line of any log.

Threads: backends' rings are appended on the trio thread; the level rings also from worker threads (a
record logged in `trio.to_thread`). One lock (re-entrant, held only for O(1) work on append and a copy of
references on read) orders numbering and appending, so every ring holds its lines in sequence order.
Followers (`wait_after`) run on the trio loop; an append from another thread wakes them through the loop's
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

#: A backend ring's default bounds (the daemon config's `output_ring_lines` / `output_ring_bytes`).
RING_LINES = 1000
RING_BYTES = 1024 * 1024
#: What one line of a log answer costs on top of its text (JSON keys, numbers): for answers bounded in bytes.
LINE_OVERHEAD = 100

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


class _Chunk:
    """Lines that arrived together: `count` lines of `text` separated by "\\n" (or, `single`, one entry
    that may itself span lines), numbered from `first`; the first `skip` of them are no longer in the ring."""

    __slots__ = ("first", "time", "stream", "text", "count", "skip", "size", "single")

    def __init__(self, first: int, when: float, stream: str, text: str, count: int, size: int,
                 single: bool) -> None:
        self.first, self.time, self.stream, self.text = first, when, stream, text
        self.count, self.skip, self.size, self.single = count, 0, size, single

    @property
    def last(self) -> int:
        return self.first + self.count - 1

    def lines(self) -> list[str]:
        return [self.text] if self.single else self.text.split("\n")


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


class OutputRing:
    """The last lines of one log, at most `lines` of them and `size` bytes of text. Appended by its owner (a
    backend's supervisor, or the daemon's logging handler); read by anyone."""

    __slots__ = ("max_lines", "max_bytes", "_chunks", "_lines", "_bytes", "_seq", "lines_in", "bytes_in",
                 "_changed", "_token", "_loop_thread")

    def __init__(self, lines: int = RING_LINES, size: int = RING_BYTES) -> None:
        self.max_lines = lines
        self.max_bytes = size
        self._chunks: deque[_Chunk] | None = None  # made by the first line (most rings of a quiet fleet stay empty)
        self._lines = 0  # lines held (not counting hidden ones)
        self._bytes = 0  # bytes of text held (hidden lines included: they are still in memory)
        self._seq = 0  # the number of this ring's last line
        self.lines_in = 0  # every line ever appended (for the metrics)
        self.bytes_in = 0  # and their bytes
        self._changed: trio.Event | None = None  # made by the first follower, set by the next append
        self._token: trio.lowlevel.TrioToken | None = None  # the followers' loop
        self._loop_thread = 0

    @property
    def last_seq(self) -> int:
        """The sequence number of this ring's last line (0 before the first)."""
        return self._seq

    @property
    def size(self) -> int:
        """Bytes of text the ring holds now (at most `max_bytes`, plus one line when a single line is
        longer)."""
        return self._bytes

    def append(self, stream: str, text: str, when: float | None = None) -> LogLine:
        """Add one entry (timestamped now, or at `when`; it may span lines) with the next number of the
        shared counter. Never blocks; safe from any thread."""
        stamp = time.time() if when is None else when
        self._add(_Chunk(0, stamp, stream, text, 1, _utf8_size(text), True))
        return LogLine(self._seq, stamp, stream, text)

    def append_lines(self, stream: str, text: str) -> None:
        """Add the lines of `text` (separated by "\\n", no trailing newline: one chunk of a child's output),
        all timestamped now, numbered in order. Never blocks; safe from any thread."""
        self._add(_Chunk(0, time.time(), stream, text, text.count("\n") + 1, _utf8_size(text), False))

    def _add(self, chunk: _Chunk) -> None:
        global _last_seq
        with _lock:
            chunk.first = _last_seq + 1
            _last_seq += chunk.count
            chunks = self._chunks
            if chunks is None:
                chunks = self._chunks = deque()
            chunks.append(chunk)
            self._seq = _last_seq
            self._lines += chunk.count
            self._bytes += chunk.size
            self.lines_in += chunk.count
            self.bytes_in += chunk.size
            if self._lines > self.max_lines or self._bytes > self.max_bytes:
                self._evict(chunks)
            changed, self._changed = self._changed, None
        if changed is not None:  # wake the followers
            if threading.get_ident() == self._loop_thread:
                changed.set()
            elif self._token is not None:
                try:
                    self._token.run_sync_soon(changed.set)
                except trio.RunFinishedError:
                    pass

    def _evict(self, chunks: deque[_Chunk]) -> None:
        """Drop the oldest lines until both bounds hold (the newest chunk is cut, never dropped)."""
        while self._lines > self.max_lines:
            oldest = chunks[0]
            shown = oldest.count - oldest.skip
            excess = self._lines - self.max_lines
            if excess >= shown and len(chunks) > 1:
                chunks.popleft()
                self._lines -= shown
                self._bytes -= oldest.size
            else:
                oldest.skip += min(excess, shown - 1)
                self._lines -= min(excess, shown - 1)
                break
        while self._bytes > self.max_bytes and len(chunks) > 1:
            oldest = chunks.popleft()
            self._lines -= oldest.count - oldest.skip
            self._bytes -= oldest.size
        if self._bytes > self.max_bytes:
            self._cut(chunks[0])

    def _cut(self, chunk: _Chunk) -> None:
        """Keep the newest lines of the one chunk left that fit `max_bytes` (at least its last line)."""
        if chunk.single:
            return  # one entry: kept whole (bounded by whoever wrote it)
        text = chunk.text
        cut = text.find("\n", max(0, len(text) - self.max_bytes))
        cut = text.rfind("\n") if cut < 0 else cut
        if cut < 0:
            return  # a single line: MAX_LINE bounds it
        kept = text[cut + 1:]
        dropped = text.count("\n", 0, cut + 1)
        chunk.first += dropped
        chunk.count -= dropped
        chunk.skip = max(0, chunk.skip - dropped)
        chunk.text = kept
        size = _utf8_size(kept)
        self._bytes += size - chunk.size
        chunk.size = size
        self._lines = chunk.count - chunk.skip

    def since(self, seq: int, *, newest: int | None = None, budget: int | None = None) -> list[LogLine]:
        """Lines with a sequence number greater than `seq`, oldest first: all of them, or only the `newest`
        N, or the oldest ones whose text (plus `LINE_OVERHEAD` each) fits in `budget` bytes (at least one:
        a reader continues after the last line it got)."""
        if seq >= self._seq:
            return []
        wanted = newest if newest is not None else self.max_lines + 1
        if wanted <= 0:
            return []
        picked: list[tuple[_Chunk, int, int, str, int]] = []
        with _lock:  # copy what may change (a cut or a hide) under the lock; split the texts after
            found = 0
            for chunk in reversed(self._chunks or ()):
                begin = max(chunk.skip, seq - chunk.first + 1)
                if begin >= chunk.count:
                    break
                picked.append((chunk, begin, chunk.first, chunk.text, chunk.count))
                found += chunk.count - begin
                if found >= wanted or begin > chunk.skip:
                    break
        out: list[LogLine] = []
        for chunk, begin, first, text, count in reversed(picked):
            lines = [text] if chunk.single else text.split("\n")
            when, stream = chunk.time, chunk.stream
            out.extend(LogLine(first + i, when, stream, lines[i]) for i in range(begin, count))
        if newest is not None and len(out) > newest:
            out = out[-newest:]
        if budget is not None:
            used = 0
            for index, line in enumerate(out):
                used += len(line.text) + LINE_OVERHEAD
                if used > budget and index > 0:
                    return out[:index]
        return out

    def tail(self, count: int) -> list[LogLine]:
        """The newest `count` lines, oldest first."""
        return self.since(0, newest=count) if count > 0 else []

    def __len__(self) -> int:
        return self._lines

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
