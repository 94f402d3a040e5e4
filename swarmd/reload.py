"""Hot reload: watch the backends file's directory and hand every real change to the Fleet.

Why the directory and not the file: editors and `sed -i` save by writing a new file and renaming it over
the old one, which ends an inotify watch on the file itself. We watch the directory (and, for a symlinked
file, the directory of its current target) and keep only events naming the file. The Fleet compares the
content digest with what it last read or wrote, so the daemon's own write-backs, temp files and `touch`
change nothing. When a symlink is pointed elsewhere the watch follows it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable

import trio
from watchfiles import awatch

log = logging.getLogger("swarmd.reload")

#: watchfiles groups events for up to `DEBOUNCE_MS` and yields once none arrived for `STEP_MS`.
DEBOUNCE_MS = 200
STEP_MS = 20
#: watchfiles hands the wait to a thread and, by default, takes it back every 5 s even when nothing
#: changed: an idle daemon would wake its event loop for nothing. The stop event ends the wait anyway.
RUST_TIMEOUT_MS = 600_000


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


async def watch_file(path: str, on_change: Callable[[], Awaitable[object]], stop: trio.Event,
                     *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Call `on_change()` after each change to the file at `path` until `stop` is set.

    `task_status.started()` once the first watch is in place.
    """
    started = False
    while not stop.is_set():
        directories, names = watched_paths(path)

        def interesting(_change: object, changed: str, names: set[str] = names) -> bool:
            return os.path.abspath(changed) in names

        retarget = trio.Event()

        async def stop_or_retarget(retarget: trio.Event = retarget) -> None:
            await stop.wait()
            retarget.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_or_retarget)
            watcher = awatch(*sorted(directories), stop_event=retarget, watch_filter=interesting,
                             debounce=DEBOUNCE_MS, step=STEP_MS, recursive=False, yield_on_timeout=False,
                             rust_timeout=RUST_TIMEOUT_MS)
            # awatch sets up its watch when first iterated; a moment later it is in place. After a
            # retarget, look once more: a save between the last event and the new watch is not lost.
            nursery.start_soon(_watch_in_place, None if started else task_status, on_change)
            started = True
            async for _changes in watcher:
                await on_change()
                if watched_paths(path) != (directories, names):
                    log.info("%s now points elsewhere: following it", path)
                    retarget.set()
            nursery.cancel_scope.cancel()


async def _watch_in_place(task_status: trio.TaskStatus[None] | None,
                          on_change: Callable[[], Awaitable[object]]) -> None:
    await trio.sleep(0.05)
    if task_status is not None:
        task_status.started()
    else:
        await on_change()
