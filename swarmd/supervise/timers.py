"""Every backend's timers (backoff delay, ready timeout, stable reset, stop ladder), fired by ONE task.

Theory of operation
-------------------
A thousand running backends each have a timer armed (stable_after, for ten seconds after each start): they
must not cost a thousand tasks, each with its event, cancel scope and coroutines. So `Timers` keeps one heap
of entries -- `[deadline, sequence, owner, timer]`, ordered by deadline then by the order they were armed --
and one task, in the nursery it is given, sleeps until the earliest deadline (`trio.move_on_at`, and an
event that wakes it when an earlier deadline is armed), takes every entry then due and hands each back to
its owner (`owner.timer_due(timer, entry)`). The task exists only while an entry is in the heap: a fleet
at rest has none.

An entry is its own handle: `arm` returns it, `cancel` takes it. A cancelled entry stays in the heap until
it comes up (it is skipped then) but lets go of its owner at once; when cancelled entries make up more than
half the heap it is rebuilt without them, so a backend restarting in a loop does not pile them up, and when
none is left the task ends. The owner also checks, when its entry is handed back, that this very entry is
still its armed one for that timer (`BackendShell.timer_due`).

Fault boundary: the task serves every backend, so an owner's callback that raises is logged and the task
carries on (the shell's own callback already turns its failures into that backend's fault).
"""

from __future__ import annotations

import heapq
import logging
import math
from typing import Any, Protocol

import trio

log = logging.getLogger("swarmd.supervisor")

#: A heap entry: [deadline (trio time), sequence, owner (None once cancelled or fired), timer].
Entry = list[Any]

_DEADLINE, _OWNER, _TIMER = 0, 2, 3


class TimerOwner(Protocol):
    def timer_due(self, timer: Any, entry: Entry) -> None:
        """`entry`, armed for `timer`, is due (maybe cancelled by the owner meanwhile: it checks)."""


class Timers:
    """The armed timers of every owner, fired in deadline order by one task of `nursery` (see the module
    docstring)."""

    __slots__ = ("_nursery", "_heap", "_sequence", "_stale", "_running", "_wakeup", "_sleeping_until")

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._heap: list[Entry] = []
        self._sequence = 0
        self._stale = 0  # cancelled entries still in the heap
        self._running = False  # the task is started (it may not have run yet)
        self._wakeup: trio.Event | None = None  # the task's, while it sleeps
        self._sleeping_until = math.inf  # the deadline it sleeps until

    def __len__(self) -> int:
        """Entries armed and neither cancelled nor fired yet."""
        return len(self._heap) - self._stale

    def arm(self, owner: TimerOwner, timer: Any, deadline: float) -> Entry:
        """Have `owner.timer_due(timer, entry)` called at trio time `deadline` (or soon after); returns
        the entry, for `cancel`."""
        self._sequence += 1
        entry: Entry = [deadline, self._sequence, owner, timer]
        heapq.heappush(self._heap, entry)
        if not self._running:
            self._running = True
            self._nursery.start_soon(self._run)
        elif deadline < self._sleeping_until and self._wakeup is not None:
            self._wakeup.set()  # the task looks again
        return entry

    def cancel(self, entry: Entry) -> None:
        """Forget `entry` (nothing when it already fired or was cancelled)."""
        if entry[_OWNER] is None:
            return
        entry[_OWNER] = None
        self._stale += 1
        if self._stale * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[_OWNER] is not None]
            heapq.heapify(self._heap)
            self._stale = 0
            if not self._heap and self._wakeup is not None:
                self._wakeup.set()  # nothing left: the task ends

    async def _run(self) -> None:
        try:
            while self._heap:
                deadline = self._heap[0][_DEADLINE]
                self._wakeup, self._sleeping_until = trio.Event(), deadline
                with trio.move_on_at(deadline) as waiting:
                    await self._wakeup.wait()
                self._wakeup, self._sleeping_until = None, math.inf
                if waiting.cancelled_caught:
                    self._fire_due()
                # else: armed earlier, or cancelled: look again
        finally:
            self._running = False
            self._wakeup, self._sleeping_until = None, math.inf

    def _fire_due(self) -> None:
        """Hand every entry due now back to its owner, in order. Those armed meanwhile wait for the next
        turn of the task, even when due at once (a checkpoint in between, as for the first ones)."""
        heap, now = self._heap, trio.current_time()
        due: list[tuple[TimerOwner, Entry]] = []
        while heap and heap[0][_DEADLINE] <= now:
            entry = heapq.heappop(heap)
            owner, entry[_OWNER] = entry[_OWNER], None  # out of the heap: `cancel` leaves it alone
            if owner is None:
                self._stale -= 1
            else:
                due.append((owner, entry))
        for owner, entry in due:
            try:
                owner.timer_due(entry[_TIMER], entry)  # (the owner skips one it cancelled meanwhile)
            except Exception:
                log.exception("a timer's owner failed to take it")
