"""The daemon's one timer task (supervise/timers.py) on trio's autojump clock: deadline order, an earlier
deadline armed while it sleeps, cancelled entries skipped and dropped, an owner that raises, and a task that
exists only while something is armed."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from swarmd.supervise.timers import Entry, Timers


class Owner:
    def __init__(self, name: str, fired: list[tuple[float, str, Any]], fail: bool = False) -> None:
        self.name, self.fired, self.fail = name, fired, fail

    def timer_due(self, timer: Any, entry: Entry) -> None:
        self.fired.append((trio.current_time(), self.name, timer))
        if self.fail:
            raise RuntimeError("owner bug")


def tasks(nursery: trio.Nursery) -> int:
    return len(nursery.child_tasks)


async def test_fires_in_deadline_order_at_their_deadlines(autojump_clock, nursery):
    fired: list[tuple[float, str, Any]] = []
    timers = Timers(nursery)
    a, b = Owner("a", fired), Owner("b", fired)
    start = trio.current_time()
    timers.arm(a, "late", start + 5)
    timers.arm(b, "early", start + 2)
    timers.arm(a, "tie", start + 5)  # same deadline: in the order armed
    assert tasks(nursery) == 1
    await trio.sleep(1)
    timers.arm(b, "earlier", start + 1.5)  # wakes the sleeping task
    await trio.sleep(10)
    assert [(round(t - start, 6), n, timer) for t, n, timer in fired] == [
        (1.5, "b", "earlier"), (2, "b", "early"), (5, "a", "late"), (5, "a", "tie")]
    assert tasks(nursery) == 0 and len(timers) == 0  # nothing armed: no task


async def test_cancelled_entries_are_skipped_and_the_task_ends_when_none_is_left(autojump_clock, nursery):
    fired: list[tuple[float, str, Any]] = []
    timers = Timers(nursery)
    owner = Owner("a", fired)
    start = trio.current_time()
    kept = timers.arm(owner, "kept", start + 3)
    gone = timers.arm(owner, "gone", start + 1)
    timers.cancel(gone)
    timers.cancel(gone)  # idempotent
    assert len(timers) == 1 and gone[2] is None  # a cancelled entry lets go of its owner at once
    await trio.sleep(5)
    assert [(timer, round(t - start, 6)) for t, _, timer in fired] == [("kept", 3)]
    timers.cancel(kept)  # fired already: nothing
    entry = timers.arm(owner, "never", start + 100)
    await trio.sleep(1)
    timers.cancel(entry)
    await trio.testing.wait_all_tasks_blocked()
    assert tasks(nursery) == 0  # it did not sleep until the cancelled deadline


async def test_many_cancelled_entries_do_not_pile_up(autojump_clock, nursery):
    timers = Timers(nursery)
    owner = Owner("a", [])
    keep = timers.arm(owner, "keep", trio.current_time() + 1000)
    for _ in range(10_000):  # a backend restarting in a loop arms and cancels its ready timer each time
        timers.cancel(timers.arm(owner, "ready", trio.current_time() + 60))
    assert len(timers._heap) <= 3 and len(timers) == 1
    timers.cancel(keep)


async def test_an_owner_that_raises_does_not_stop_the_others(autojump_clock, nursery):
    fired: list[tuple[float, str, Any]] = []
    timers = Timers(nursery)
    start = trio.current_time()
    timers.arm(Owner("broken", fired, fail=True), "t", start + 1)
    timers.arm(Owner("fine", fired), "t", start + 1)
    timers.arm(Owner("later", fired), "t", start + 2)
    await trio.sleep(3)
    assert [name for _, name, _ in fired] == ["broken", "fine", "later"]


async def test_an_entry_armed_while_firing_waits_for_the_next_turn(autojump_clock, nursery):
    fired: list[str] = []
    timers = Timers(nursery)

    class Rearming:
        def timer_due(self, timer: Any, entry: Entry) -> None:
            fired.append(timer)
            if timer == "first":
                timers.arm(self, "again", trio.current_time())  # due at once

    timers.arm(Rearming(), "first", trio.current_time() + 1)
    await trio.sleep(2)
    assert fired == ["first", "again"]
