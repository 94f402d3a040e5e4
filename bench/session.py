"""Run-wide settings and the context manager that brings one system up with N children."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.systems import Swarmd, System


@dataclass
class Settings:
    """What a benchmark may spend: `quick` is the ~2-minute mode. `swarmd_src`: the checkout whose swarmd
    runs (None: the one installed in the bench's environment)."""

    quick: bool
    root: Path
    systems: list[type[System]]
    swarmd_src: Path | None = None

    def sizes(self, full: list[int], quick: list[int]) -> list[int]:
        return quick if self.quick else full


class StartFailed(RuntimeError):
    """A system did not bring all its children up in time."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def spawn_timeout(count: int) -> float:
    """Generous: the slowest peer spawns 1000 in ~7 s on 2 cores."""
    return 30.0 + count * 0.06


@contextlib.contextmanager
def running(cls: type[System], count: int, settings: Settings, *, system: System | None = None,
            started: int | None = None) -> Iterator[tuple[System, float]]:
    """Start `cls` (or `system`, made by the caller) with `count` children labelled c0..; yield (system,
    seconds until the first `started` of them -- default all -- were exec'd).

    Whatever happens, everything the system started is killed on exit.
    """
    if system is None:
        system = Swarmd(settings.root, settings.swarmd_src) if cls is Swarmd else cls(settings.root)
    started = count if started is None else started
    try:
        mark = system.stamps.mark()
        programs = {i: f"c{i}" for i in range(count)}
        launched = system.start(programs)
        last = system.stamps.wait_all({programs[i] for i in range(started)}, mark, spawn_timeout(started))
        if last is None:
            raise StartFailed(f"{cls.name}: not all {started} children started in time\n{system.log_tail()}")
        system.wait_api()
        yield system, last - launched
    finally:
        system.close()


@contextlib.contextmanager
def guarded(notes: list[str], what: str) -> Iterator[None]:
    """Record a failure of one system/case as a note and go on with the next (Ctrl-C still stops)."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - a benchmark reports, it does not stop at the first failure
        message = f"FAILED {what}: {type(err).__name__}: {err}"
        log(message)
        notes.append(message)


def budgeted(max_reps: int, min_reps: int, budget_s: float) -> Iterator[int]:
    """Repetition indexes: at least `min_reps`, at most `max_reps`, stopping once `budget_s` is spent."""
    start = time.monotonic()
    for index in range(max_reps):
        if index >= min_reps and time.monotonic() - start > budget_s:
            return
        yield index
