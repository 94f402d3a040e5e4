"""Hot reload: watch the backends file's directory and hand every finished save to the Fleet.

Why the directory and not the file: editors and `sed -i` save by writing a new file and renaming it over
the old one, which ends an inotify watch on the file itself. We watch the directory (and, for a symlinked
file, the directories along the link chain) and keep only events naming the file. The Fleet compares the
file's bytes with what it last read or wrote, so the daemon's own write-backs and `touch` change nothing;
a real change is parsed entry by entry where the layout allows (`backends_file.incremental`), so a save
of one entry of 10,000 costs tens of milliseconds, not seconds. When a symlink is pointed elsewhere, the watch follows it before the file is read again.

Why inotify directly rather than watchfiles: watchfiles waits in a thread that takes the GIL every `step`
(20 ms) to poll its stop event -- 50 wake-ups a second, 0.3 % of a core for an idle daemon (measured by
bench/), and it reports a file as changed while a writer is still writing it. Here the inotify descriptor
sits in trio's own epoll: no thread, no wake-up while nothing happens, cancelled like any trio task. And we
react only to *finished* saves -- a writer closing the file (IN_CLOSE_WRITE) or a file renamed into place
(IN_MOVED_TO) -- never to a half-written file, which could parse as a valid but truncated fleet.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger("swarmd.reload")

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

#: A finished save of a file, or a symlink made or moved into place (IN_MODIFY is left out on purpose:
#: it fires for each write of a save still in progress).
WATCH_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_ONLYDIR
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len -- then `len` bytes of NUL-padded name


class Inotify:
    """One inotify descriptor, read through trio. Owns the descriptor; `close()` releases it."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise _os_error("inotify_init1")
        self.fd = fd

    def add_watch(self, directory: str, mask: int = WATCH_MASK) -> int:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), mask)
        if wd < 0:
            raise _os_error(f"inotify_add_watch {directory}")
        return wd

    def remove_watch(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self.fd, wd)  # fails harmlessly for a directory already gone

    async def events(self) -> list[tuple[int, int, str]]:
        """Wait for events, then return every one queued: (wd, mask, name)."""
        await trio.lowlevel.wait_readable(self.fd)
        found = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return found
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
                found.append((wd, mask, os.fsdecode(raw)))
                offset += _EVENT.size + length

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.fd)
        os.close(self.fd)


def _os_error(what: str) -> OSError:
    code = ctypes.get_errno() or errno.EIO
    return OSError(code, f"{what}: {os.strerror(code)}")


def watched_paths(path: str) -> tuple[set[str], set[str]]:
    """(directories to watch, file paths whose events matter) for `path`, following symlinks."""
    names = {os.path.abspath(path)}
    current = os.path.abspath(path)
    for _ in range(40):  # a chain of links, each hop resolved (bounded: no loop runs forever)
        if not os.path.islink(current):
            break
        target = os.readlink(current)
        current = os.path.abspath(os.path.join(os.path.dirname(current), target))
        names.add(current)
    names.add(os.path.realpath(path))
    directories = {os.path.dirname(name) for name in names if os.path.isdir(os.path.dirname(name))}
    return directories, names


def _is_save(mask: int, full_path: str) -> bool:
    """A finished save: a writer closed the file, or a file or link was moved into place. A newly
    created *regular* file is not yet written (its IN_CLOSE_WRITE follows); a created link is complete."""
    if mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
        return True
    return bool(mask & IN_CREATE) and os.path.islink(full_path)


async def watch_file(path: str, on_change: Callable[[], Awaitable[object]], stop: trio.Event,
                     *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Call `on_change()` after each finished save of the file at `path`, until `stop` is set.

    `task_status.started()` once the watches are in place (a save after that is never missed). Where
    inotify cannot be had (its per-user instance or watch limit reached, as in crowded containers), the
    file is polled through watchfiles instead, with a warning.
    """
    try:
        inotify = Inotify()
    except OSError as err:
        log.warning("cannot watch %s with inotify (%s): polling it every %d ms instead", path, err,
                    POLL_MS)
        await _poll_file(path, on_change, stop, task_status=task_status)
        return
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_when_set, stop, nursery.cancel_scope)
            watches: dict[str, int] = {}
            directories, names = _rewatch(inotify, watches, path)
            task_status.started()
            while True:
                events = await inotify.events()
                by_wd = {wd: directory for directory, wd in watches.items()}
                saved = False
                for wd, mask, name in events:
                    directory = by_wd.get(wd)
                    if directory is not None and name:
                        full = os.path.join(directory, name)
                        saved = saved or (full in names and _is_save(mask, full))
                if not saved:
                    continue
                now = watched_paths(path)
                if now != (directories, names):
                    log.info("%s now points elsewhere: following it", path)
                    directories, names = _rewatch(inotify, watches, path)
                await on_change()
    finally:
        inotify.close()


def _rewatch(inotify: Inotify, watches: dict[str, int], path: str) -> tuple[set[str], set[str]]:
    """Watch exactly the directories `path` now involves; returns (directories, names)."""
    directories, names = watched_paths(path)
    for directory in [d for d in watches if d not in directories]:
        inotify.remove_watch(watches.pop(directory))
    for directory in directories - watches.keys():
        watches[directory] = inotify.add_watch(directory)
    return directories, names


POLL_MS = 300


async def _poll_file(path: str, on_change: Callable[[], Awaitable[object]], stop: trio.Event,
                     *, task_status: trio.TaskStatus[None]) -> None:
    """The fallback: watchfiles in polling mode over the same directories (the Fleet's comparison of the
    file's bytes makes a spurious call free)."""
    from watchfiles import awatch

    directories, names = watched_paths(path)
    watcher = awatch(*sorted(directories), stop_event=stop, force_polling=True, poll_delay_ms=POLL_MS,
                     recursive=False, watch_filter=lambda _change, changed: os.path.abspath(changed) in names)
    task_status.started()
    async for _changes in watcher:
        await on_change()


async def _cancel_when_set(stop: trio.Event, scope: trio.CancelScope) -> None:
    await stop.wait()
    scope.cancel()
