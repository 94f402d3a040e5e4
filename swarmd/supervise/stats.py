"""Counters kept for the metrics: plain integers, bumped by one-line hooks where things happen, read at
scrape time by `swarmd.metrics`.

Theory of operation
-------------------
A scrape must see what happened between two scrapes even when it came and went (a crash and a restart in
a second), so the events that matter are counted as they happen instead of sampled. They are few and cheap
(an int, a list of ints), all on the trio thread, and live where the thing they count lives: a backend's
`BackendStats` on its shell (so they follow the backend through a change of id and vanish with it), the
Fleet's `FleetStats` on the Fleet. What the lifecycle already counts (starts, restarts, the last exit) is
read from the lifecycle; what the output ring counts (lines and bytes) from the ring. Nothing here knows
about Prometheus: `swarmd.metrics` turns these into metric families.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from swarmd.supervise.lifecycle import Event, Exited, Lifecycle, Spawned, State

#: Upper bounds (seconds) of the start-to-ready histogram: a `python -m http.server` is ready in a tenth of
#: a second, a ComfyUI loading its models in minutes (its ready_timeout defaults to 600 s).
READY_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(slots=True)
class Histogram:
    """A fixed-bucket histogram as Prometheus keeps one: a count per upper bound (not cumulative here),
    the count above the last bound, and the sum of every observation."""

    bounds: tuple[float, ...] = READY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(READY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound as Prometheus writes it, observations at or below it), ending with "+Inf"."""
        return cumulative(self.counts, self.bounds)


def cumulative(counts: Sequence[int], bounds: Sequence[float] = READY_BUCKETS) -> list[tuple[str, int]]:
    """Per-bucket `counts` (one more than `bounds`: the last is above every bound) as Prometheus's cumulative
    buckets: (upper bound as written, observations at or below it), ending with "+Inf"."""
    running, out = 0, []
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return out


@dataclass(slots=True)
class BackendStats:
    """What one backend's shell counts for the metrics. Owned by `BackendShell` (`shell.stats`).

    `ready_since` is the wall-clock time (time.time()) at which the backend last became ready, None while it
    is not; `start_to_ready` observes, for each process start that became ready, the seconds from its spawn
    to its readiness (trio's clock); `free_ok` / `free_failed` count FreeBackendMemory calls by result.
    `exit_time` and `exit_cause` are the wall-clock time of the last exit of a process and the most telling
    line of its output: the status page shows them after the backend is running again, when its status
    message no longer says why it had stopped.
    """

    ready_since: float | None = None
    exit_time: float | None = None
    exit_cause: str = ""
    start_to_ready: Histogram = field(default_factory=Histogram)
    free_ok: int = 0
    free_failed: int = 0
    _spawned_at: float | None = None  # trio time of the current process's spawn, until it is ready

    def observe(self, event: Event, before: State, machine: Lifecycle, now: float) -> None:
        """Called by the shell after `machine` took `event` at trio time `now`, in state `before` until
        then. Never raises (plain arithmetic on what the machine already decided)."""
        after = machine.state
        if isinstance(event, Exited) and machine.last_exit is event.exit:  # its own process's exit
            self.exit_time, self.exit_cause = time.time(), event.cause
        if isinstance(event, Spawned) and after is State.LOADING and machine.pid == event.pid:
            self._spawned_at = now
        if after is State.RUNNING and before is not State.RUNNING:
            self.ready_since = time.time()
            if self._spawned_at is not None:
                self.start_to_ready.observe(max(0.0, now - self._spawned_at))
        elif after is not State.RUNNING and before is State.RUNNING:
            self.ready_since = None
        if after is not State.LOADING:
            self._spawned_at = None  # ready, or the start ended otherwise: no observation pending

    def freed(self, ok: bool) -> None:
        """One FreeBackendMemory call reached this backend; `ok` is whether it answered success."""
        if ok:
            self.free_ok += 1
        else:
            self.free_failed += 1


@dataclass
class FleetStats:
    """What the Fleet counts for the metrics (`fleet.stats`).

    `reloads`: versions of the backends file read from disk and applied (a saved edit, SIGHUP, or one found
    before a mutation); `reloads_failed`: reads of a changed file that could not be applied (invalid or
    unreadable: the last good fleet keeps running); `file_writes`: the file written by a mutation;
    `mutations_refused`: API mutations refused (a validation error, an invalid file, a lock timeout, a
    failed write, a daemon stopping).
    """

    reloads: int = 0
    reloads_failed: int = 0
    file_writes: int = 0
    mutations_refused: int = 0
