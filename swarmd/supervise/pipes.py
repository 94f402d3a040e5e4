"""Every backend's output pipes, read by ONE task of the daemon, a chunk at a time.

Theory of operation
-------------------
A backend that prints as fast as it can must not be slowed down by its supervisor, and a thousand quiet
backends must not cost a thousand reader tasks. So `PipeReader` registers the read end of every child's
stdout and stderr in one epoll set of its own, and one trio task waits for that set's fd to become
readable (an epoll fd is itself pollable), then reads each ready pipe once -- up to `READ_SIZE` bytes, about
a thousand lines of a chatty server -- and hands the complete lines of that read to the pipe's owner as one
text (`on_output(stream, text)`). Per read: one `os.read`, one `bytes.rfind`, one decode; per line: nothing
in Python. The task exists only while some pipe is open: a fleet at rest has none.

The same task also waits for the exits of those processes (`watch_exit`): each one's pidfd is in the same
epoll set, and its owner is called back when it becomes readable. So a running backend costs no task at
all -- its shell starts one only once the process has exited, to reap it and report (at 1000 running
backends a task each, with its seven coroutines, was ~2.8 MB). If the task is cancelled from outside (the
daemon's nursery, at once), every process still watched is told so (`cancelled()`: its shell SIGKILLs its
group), as the task per process used to kill it when cancelled.

`LineSplitter` is the per-pipe state: the partial last line of the previous read, and whether a line over
`MAX_LINE` is being cut. A line longer than `MAX_LINE` bytes (binary junk, a progress bar without newline,
a runaway print) is delivered at once, cut, with `CUT_MARK`, and the rest of it up to the next newline is
dropped: memory per pipe is bounded by `MAX_LINE` however long the line. A CR before a newline is dropped
(CRLF output); bytes that are not UTF-8 become U+FFFD.
"""

from __future__ import annotations

import errno
import logging
import os
import select
from collections.abc import Callable, Sequence
from typing import Protocol

import trio

log = logging.getLogger("swarmd.supervisor")

#: Longer output lines are cut (a child printing binary junk must not eat memory).
MAX_LINE = 64 * 1024
#: At most this much is read from one pipe per wake-up (a pipe holds 64 KiB by default).
READ_SIZE = 64 * 1024
#: Reads of one pipe per wake-up before the others (and the rest of the daemon) get their turn.
READS_PER_TURN = 4
#: Appended to a line cut at MAX_LINE.
CUT_MARK = f" [swarmd: line cut at {MAX_LINE // 1024} KiB]"

#: `on_output(stream, text)`: the complete lines of one read, joined by "\n" (no trailing newline).
OnOutput = Callable[[str, str], None]


class ExitWatcher(Protocol):
    """Who is told when a watched process exits (`PipeReader.watch_exit`): one object per process, its
    two methods called by the reader -- not two closures, which cost ~0.4 KB a running backend."""

    def exited(self) -> None:
        """The process has exited (its pidfd is readable)."""

    def cancelled(self) -> None:
        """The reader was cancelled from outside before the process exited (the daemon stops at once)."""


def _decode(data: bytes) -> str:
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
        if data.endswith(b"\r"):
            data = data[:-1]
    return data.decode("utf-8", "replace")


class LineSplitter:
    """Turns one pipe's reads into complete lines (see the module docstring). Pure: no I/O."""

    __slots__ = ("_pending", "_cutting")

    def __init__(self) -> None:
        self._pending = b""  # the partial last line (at most MAX_LINE bytes)
        self._cutting = False  # dropping the rest of a line that was cut

    def feed(self, data: bytes) -> str | None:
        """The complete lines `data` ends (with what came before), or None when it ends none."""
        if self._cutting:
            newline = data.find(b"\n")
            if newline < 0:
                return None
            self._cutting = False
            data = data[newline + 1:]
        end = data.rfind(b"\n")
        if end < 0:
            pending = self._pending + data
            if len(pending) <= MAX_LINE:
                self._pending = pending
                return None
            self._pending, self._cutting = b"", True
            return _decode(pending[:MAX_LINE]) + CUT_MARK
        first_end = data.find(b"\n")
        pending, self._pending = self._pending, data[end + 1:]
        text = self._complete(pending, data, first_end, end)
        if len(self._pending) > MAX_LINE:  # a read larger than MAX_LINE ending in a long partial line
            # (not with READ_SIZE <= MAX_LINE; kept correct anyway): delivered cut now, its rest dropped
            text += "\n" + _decode(self._pending[:MAX_LINE]) + CUT_MARK
            self._pending, self._cutting = b"", True
        return text

    @staticmethod
    def _complete(pending: bytes, data: bytes, first_end: int, end: int) -> str:
        """The lines `pending` + `data[:end]` make (`first_end`: where the first of them ends in `data`)."""
        if len(pending) + first_end > MAX_LINE:  # the first line, with what came before, is too long
            first = _decode((pending + data[:first_end])[:MAX_LINE]) + CUT_MARK
            rest = data[first_end + 1:end]
            return first if first_end == end else first + "\n" + LineSplitter._cut_each(rest)
        body = data[:end]
        if end > MAX_LINE:  # a line inside one read can be too long only if the read is
            return LineSplitter._cut_each(pending + body)
        return _decode(pending + body if pending else body)

    @staticmethod
    def _cut_each(data: bytes) -> str:
        return "\n".join(_decode(line[:MAX_LINE]) + CUT_MARK if len(line) > MAX_LINE else _decode(line)
                         for line in data.split(b"\n"))

    def finish(self) -> str | None:
        """At end of file: the last line if it had no newline (None when there is none)."""
        pending, self._pending, self._cutting = self._pending, b"", False
        return _decode(pending) if pending else None


class _Pipe:
    __slots__ = ("fd", "stream", "splitter", "group")

    def __init__(self, fd: int, stream: str, group: PipeGroup) -> None:
        self.fd, self.stream, self.group = fd, stream, group
        self.splitter = LineSplitter()


class PipeGroup:
    """The pipes of one process: `closed` is set once every one of them reached end of file, or when
    `on_output` raised (`error`: the reader stops reading the group, the owner's task raises it)."""

    __slots__ = ("on_output", "open", "is_closed", "_closed", "error", "_reader")

    def __init__(self, on_output: OnOutput, reader: PipeReader) -> None:
        self.on_output = on_output
        self._reader = reader
        self.open: list[_Pipe] = []
        self.is_closed = False
        self._closed: trio.Event | None = None  # made when someone waits (once its process exited)
        self.error: Exception | None = None

    @property
    def closed(self) -> trio.Event:
        """Set once the group is closed (made on demand, set at once when it already is)."""
        if self._closed is None:
            self._closed = trio.Event()
            if self.is_closed:
                self._closed.set()
        return self._closed

    def _close(self) -> None:
        self.is_closed = True
        if self._closed is not None:
            self._closed.set()

    def release(self) -> None:
        """Stop reading the pipes still open (see `PipeReader.release`)."""
        self._reader.release(self)


class PipeReader:
    """Reads the output pipes of every process started through it, in one task of `nursery`. Owns the
    read ends it is given: it closes each at end of file or on `release`."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._epoll: select.epoll | None = None
        self._pipes: dict[int, _Pipe] = {}
        #: pidfd -> the watcher of each process whose exit is watched
        self._exits: dict[int, ExitWatcher] = {}
        self._scope: trio.CancelScope | None = None  # the reader task's, while it runs

    def watch_exit(self, pidfd: int, watcher: ExitWatcher) -> None:
        """Call `watcher.exited()` once `pidfd` is readable (its process exited), from the reader's task,
        and forget it; call `watcher.cancelled()` instead if that task is cancelled from outside first. The
        pidfd stays the caller's: `forget_exit` it before closing it. Raises OSError when it cannot be
        registered."""
        if self._epoll is None:
            self._epoll = select.epoll()
        self._epoll.register(pidfd, select.EPOLLIN)
        self._exits[pidfd] = watcher
        self._ensure_task()

    def forget_exit(self, pidfd: int) -> None:
        """Stop watching `pidfd` (nothing when it is not watched)."""
        if self._take_exit(pidfd) is not None:
            self._end_task_if_idle()

    def _take_exit(self, pidfd: int) -> ExitWatcher | None:
        """Unregister `pidfd`; its watcher, or None when it was not watched."""
        watched = self._exits.pop(pidfd, None)
        if watched is not None:
            assert self._epoll is not None
            self._epoll.unregister(pidfd)
        return watched

    def watch(self, pipes: Sequence[tuple[int, str]], on_output: OnOutput) -> PipeGroup:
        """Start reading `pipes` ((fd, stream name) each; made non-blocking here), delivering to
        `on_output`. Raises OSError when an fd cannot be registered (none of them is then)."""
        if self._epoll is None:
            self._epoll = select.epoll()
        group = PipeGroup(on_output, self)
        try:
            for fd, stream in pipes:
                os.set_blocking(fd, False)
                self._epoll.register(fd, select.EPOLLIN)
                pipe = self._pipes[fd] = _Pipe(fd, stream, group)
                group.open.append(pipe)
        except OSError:
            for pipe in group.open:
                self._epoll.unregister(pipe.fd)
                del self._pipes[pipe.fd]
            raise
        self._ensure_task()
        return group

    def _ensure_task(self) -> None:
        if self._scope is None:
            self._scope = trio.CancelScope()
            self._nursery.start_soon(self._run, self._scope)

    def _end_task_if_idle(self) -> None:
        if not self._pipes and not self._exits and self._scope is not None:
            self._scope.cancel()  # nothing left to wait for: the task ends (the next watch starts another)
            self._scope = None

    def release(self, group: PipeGroup) -> None:
        """Stop reading `group`'s pipes that are still open (their last partial line is delivered, unless
        delivering failed) and close them. Idempotent."""
        for pipe in list(group.open):
            if group.error is not None:
                pipe.splitter.finish()  # the owner failed: nothing more is delivered
            self._close(pipe)

    async def _run(self, scope: trio.CancelScope) -> None:
        try:
            with scope:
                assert self._epoll is not None
                epoll = self._epoll
                while self._pipes or self._exits:
                    await trio.lowlevel.wait_readable(epoll.fileno())
                    self._read_ready(epoll.poll(0, 1024))  # (a call: nothing stays referenced by this frame)
        except trio.Cancelled:  # from outside (its own scope is cancelled only when nothing is left)
            self._cancelled()
            raise
        finally:
            if self._scope is scope:
                self._scope = None

    def _cancelled(self) -> None:
        """The task was cancelled from outside: tell every watched process's owner, and forget them."""
        for pidfd in list(self._exits):
            watched = self._take_exit(pidfd)
            assert watched is not None
            _call(watched.cancelled, "the cancellation of a process's exit watch failed")

    def _read_ready(self, events: list[tuple[int, int]]) -> None:
        for fd, _events in events:
            pipe = self._pipes.get(fd)
            if pipe is not None:
                self._read(pipe)
                continue
            watched = self._take_exit(fd)
            if watched is not None:
                self._end_task_if_idle()
                _call(watched.exited, "handling a process's exit failed")

    def _read(self, pipe: _Pipe) -> None:
        for _ in range(READS_PER_TURN):
            try:
                data = os.read(pipe.fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno != errno.EIO:
                    raise
                data = b""  # EIO: the writer side is gone; treat as end of file
            if not data:
                self._close(pipe)
                return
            text = pipe.splitter.feed(data)
            if text is not None and not self._deliver(pipe, text):
                return
            if len(data) < READ_SIZE:
                return  # drained for now

    def _close(self, pipe: _Pipe) -> None:
        group = pipe.group
        if self._pipes.pop(pipe.fd, None) is None:
            return
        assert self._epoll is not None
        self._epoll.unregister(pipe.fd)
        os.close(pipe.fd)
        self._end_task_if_idle()
        last = pipe.splitter.finish()
        if last is not None:
            self._deliver(pipe, last)
        # No cycle left behind (pipe <-> group): with the heap frozen, a deleted backend whose
        # `on_output` a cycle held would never be freed.
        if pipe in group.open:
            group.open.remove(pipe)
        if not group.open:
            group._close()

    def _deliver(self, pipe: _Pipe, text: str) -> bool:
        """Hand `text` to the pipe's owner. Its failure is its own (a fault boundary: the reader serves
        every backend): the group is released and closed with the error. False when that happened."""
        group = pipe.group
        try:
            group.on_output(pipe.stream, text)
            return True
        except Exception as err:
            if group.error is None:
                group.error = err
                self.release(group)
                group._close()
            return False


def _call(callback: Callable[[], None], failure: str) -> None:
    """Call an owner's callback; its failure is the owner's, logged, never the reader's (which serves every
    backend)."""
    try:
        callback()
    except Exception:
        log.exception(failure)
