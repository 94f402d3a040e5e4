"""Config change: add, change and remove one program by editing the config file and applying it."""

from __future__ import annotations

import time

from bench import procs
from bench.report import Goal, Result
from bench.session import Settings, guarded, log, running
from bench.systems import System

NAME = "config"
EXTRA = 999_999
TIMEOUT_S = 15.0
SETTLE_S = 0.4


def run(settings: Settings) -> Result:
    """Add/change/remove latency at 10, 100 and 1000 children (quick: 10)."""
    result = Result(NAME, "Config change: file edited -> new process exec'd / old one gone")
    sizes = settings.sizes([10, 100, 1000], [10])
    for op in ("add", "change", "remove"):
        for count in sizes:
            result.goals.append(Goal(op, f"n={count}", 50.0, f"config change ({op}, {count}) under 50 ms"))
    result.notes.append(
        "each edit rewrites the whole file atomically (temp + rename); swarmd: its file watcher applies it; "
        "supervisord: what `supervisorctl update` does (reloadConfig, stop/remove/addProcessGroup) over "
        "XML-RPC in-process; circus: `reloadconfig` through CircusClient in-process. add/change: until the "
        "new child's exec stamp; remove: until the old child has exited (pidfd)")
    for count in sizes:
        reps = 3 if settings.quick else {10: 10, 100: 6}.get(count, 3)
        for cls in settings.systems:
            with guarded(result.notes, f"config {cls.name} n={count}"), running(cls, count, settings) as (
                system, _spawn,
            ):
                time.sleep(1.0)
                for rep in range(reps):
                    _cycle(system, result, f"n={count}", rep)
                for op in ("add", "change", "remove"):
                    fig = result.get(op, f"n={count}", cls.name)
                    if fig is not None:
                        log(f"config {cls.name} n={count} {op}: median {fig.median:.1f} ms")
    return result


def _cycle(system: System, result: Result, case: str, rep: int) -> None:
    """Add the extra program, change its command, remove it; one sample of each."""
    name = system.name
    pid = None
    for op, label in (("add", f"x{rep}a"), ("change", f"x{rep}b")):
        system.programs[EXTRA] = label
        mark = system.stamps.mark()
        start = time.time()
        system.write_config()
        system.apply()
        stamp = system.stamps.wait_label(label, mark, TIMEOUT_S)
        result.add(op, case, "ms", name, (stamp.t - start) * 1000 if stamp else None)
        time.sleep(SETTLE_S)
        if stamp is None:
            return
        pid = stamp.pid
    assert pid is not None
    del system.programs[EXTRA]
    start = time.time()
    system.write_config()
    system.apply()
    gone = procs.wait_gone([pid], TIMEOUT_S)
    result.add("remove", case, "ms", name, (gone - start) * 1000 if gone else None)
    time.sleep(SETTLE_S)
