"""Scale: spawn N until all exec'd, daemon RSS and idle CPU, SIGTERM of the daemon until all N are gone."""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench import procs
from bench.report import Goal, Result
from bench.session import Settings, guarded, log, running, spawn_timeout
from bench.stamps import StampLog, write_child
from bench.systems import System

NAME = "scale"


def run(settings: Settings) -> Result:
    """Spawn, RSS, idle CPU and shutdown at 100 and 1000 children (quick: 100 only)."""
    result = Result(NAME, "Scale: spawn, memory, idle CPU, shutdown")
    result.goals += [
        Goal("spawn", "n=1000", 1.5, "spawn of 1000 under 1.5 s"),
        Goal("shutdown", "n=1000", 1.0, "shutdown of 1000 under 1 s"),
        Goal("idle CPU", "n=100", 0.05, "idle CPU under 0.05% (100 children)"),
        Goal("idle CPU", "n=1000", 0.05, "idle CPU under 0.05% (1000 children)"),
        Goal("RSS", "n=1000", 60.0, "RSS of daemon + guardian at most 60 MB (1000 children)"),
    ]
    windows, window_s = (2, 2.5) if settings.quick else (4, 5.0)
    # Idle starts after swarmd's stable_after (10 s from each start), a one-off timer per backend.
    settle_s = 2.0 if settings.quick else 11.0
    result.notes.append(
        "spawn: daemon launched -> last child's exec stamp; RSS, PSS and CPU: the daemon plus its helper "
        "processes (swarmd's guardian), children excluded (PSS counts pages shared between them once); "
        "idle CPU: % of one core in "
        f"{windows} windows of {window_s} s from {settle_s:g} s after the last start, CPU time from "
        "/proc/*/task/*/schedstat (ns); shutdown: SIGTERM of the daemon -> every child exited (pidfd)")
    plan = [(100, 1)] if settings.quick else [(100, 2), (1000, 3)]
    for count, reps in plan:
        with guarded(result.notes, f"scale floor n={count}"):
            floors = [_floor(settings, count) for _ in range(reps)]
            result.notes.append(
                f"spawn floor n={count}: a bare Python loop that Popens the same {count} children (no "
                f"supervisor, no start-up) has the last one exec'd after {statistics.median(floors):.2f} s "
                "(median): on 2 cores the children's own start-up competes with whoever spawns them")
        for cls in settings.systems:
            for rep in range(reps):
                with guarded(result.notes, f"scale {cls.name} n={count} rep {rep}"):
                    _one(settings, result, cls, count, idle=(rep == 0), windows=windows, window_s=window_s,
                         settle_s=settle_s)
    return result


def _floor(settings: Settings, count: int) -> float:
    """Seconds from the first Popen of `count` benchmark children by a bare loop to the last one's exec
    stamp: the least any supervisor written in Python could take on this machine."""
    directory = Path(tempfile.mkdtemp(dir=settings.root, prefix="floor-"))
    child = write_child(directory)
    stamps = StampLog(directory / "stamps.fifo")
    children: list[subprocess.Popen[bytes]] = []
    try:
        mark = stamps.mark()
        labels = {f"c{i}" for i in range(count)}
        start = time.time()
        for label in sorted(labels):
            children.append(subprocess.Popen([str(child), label, str(stamps.path)], stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                             start_new_session=True))
        last = stamps.wait_all(labels, mark, spawn_timeout(count))
        if last is None:
            raise RuntimeError(f"bare loop: not all {count} children started in time")
        return last - start
    finally:
        for popen in children:
            popen.kill()
        for popen in children:
            popen.wait()
        stamps.close()


def _one(settings: Settings, result: Result, cls: type[System], count: int, *, idle: bool, windows: int,
         window_s: float, settle_s: float) -> None:
    """One start-measure-SIGTERM cycle of `cls` with `count` children; idle CPU only when `idle`."""
    case = f"n={count}"
    with running(cls, count, settings) as (system, spawn):
        result.add("spawn", case, "s", cls.name, spawn)
        time.sleep(2.0)
        helpers = system.helper_pids()
        result.add("RSS", case, "MB", cls.name, procs.rss_bytes(helpers) / 1e6)
        result.add("PSS", case, "MB", cls.name, procs.pss_bytes(helpers) / 1e6)
        if idle:
            time.sleep(settle_s - 2.0)
            for _ in range(windows):
                before = procs.cpu_ns(helpers)
                time.sleep(window_s)
                used = procs.cpu_ns(helpers) - before
                result.add("idle CPU", case, "%", cls.name, used / 1e9 / window_s * 100)
        children = system.child_pids()
        assert system.proc is not None
        start = time.time()
        system.terminate()
        gone = procs.wait_gone(children, 120.0)
        result.add("shutdown", case, "s", cls.name, gone - start if gone else None)
        try:
            code = system.proc.wait(timeout=60)
            exited = time.time() - start
            result.add("daemon exit", case, "s", cls.name, exited)
            if code != 0:
                result.notes.append(f"{cls.name} n={count}: exit status {code} after SIGTERM")
        except Exception:  # noqa: BLE001
            result.add("daemon exit", case, "s", cls.name, None)
        log(f"scale {cls.name} {case}: spawn {spawn:.2f} s, shutdown "
            f"{(gone - start) if gone else float('nan'):.2f} s")
