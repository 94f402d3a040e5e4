"""Config change: add, change and remove one program by editing the config file and applying it.

At 10, 100, 1000 children for every system, and at 10,000 for swarmd alone (full mode): the peers are left
out there, and the output says so -- bringing 10,000 programs up under them would take much of the run
(circus spawns 1000 in ~7 s; supervisord answers getAllProcessInfo at 1000 in ~1 s, and `update` re-reads
and compares every program).

swarmd holds three descriptors per running backend (a pidfd, two pipes). Where the hard limit on open files
is too low for 10,000 of them (a container's 20,000, say: raising a hard limit takes CAP_SYS_RESOURCE), the
file still declares 10,000 backends but only as many as the limit allows are enabled (the others are
`enabled: false`), and the output says how many ran (`running_at_most`). The edit and reload costs this
benchmark is about grow with the file; the running ones add the event loop's load.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterator
from pathlib import Path

from bench import procs
from bench.report import Goal, Result
from bench.session import Settings, guarded, log, running
from bench.systems import Swarmd, System, atomic_write

NAME = "config"
EXTRA = 999_999
TIMEOUT_S = 15.0
SETTLE_S = 0.4
#: Open files swarmd holds per running backend (a pidfd, its stdout and stderr pipes), and a reserve for
#: everything else it opens (the API's connections, the file watcher, its own modules).
FDS_PER_BACKEND = 3
FD_RESERVE = 500
#: From this many children on, only swarmd is measured (see the module docstring).
SWARMD_ONLY_FROM = 10_000


def goal_ms(count: int) -> float:
    """The goal of a config change at `count` children: 50 ms up to 1000, 500 ms at 10,000 (issue 14)."""
    return 50.0 if count <= 1000 else 500.0


def run(settings: Settings) -> Result:
    """Add/change/remove latency at 10, 100, 1000 children and, swarmd only, 10,000 (quick: 10)."""
    result = Result(NAME, "Config change: file saved -> new process exec'd / old one gone")
    sizes = settings.sizes([10, 100, 1000, 10_000], [10])
    for op in ("add", "change", "remove"):
        for count in sizes:
            goal = goal_ms(count)
            result.goals.append(Goal(op, f"n={count}", goal, f"config change ({op}, {count}) under {goal:g} ms"))
    result.notes.append(
        "each edit rewrites the whole file atomically (temp + rename), timed from the start of that write "
        "(the new text is made before); swarmd: its file watcher applies it; "
        "supervisord: what `supervisorctl update` does (reloadConfig, stop/remove/addProcessGroup) over "
        "XML-RPC in-process; circus: `reloadconfig` through CircusClient in-process. add/change: until the "
        "new child's exec stamp; remove: until the old child has exited (pidfd)")
    for count in sizes:
        reps = 3 if settings.quick else {10: 10, 100: 6}.get(count, 3)
        for cls in settings.systems:
            if count >= SWARMD_ONLY_FROM and cls is not Swarmd:
                note = f"config {cls.name} n={count}: not measured (peers only up to {SWARMD_ONLY_FROM - 1})"
                log(note)
                result.notes.append(note)
                continue
            with guarded(result.notes, f"config {cls.name} n={count}"), running_at_most(
                cls, count, settings, result.notes) as (system, _spawn):
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
        text = system.config_text()  # made before the clock starts: 3 MB of text at 10,000
        mark = system.stamps.mark()
        start = time.time()
        atomic_write(system.config_path, text)
        system.apply()
        stamp = system.stamps.wait_label(label, mark, TIMEOUT_S)
        result.add(op, case, "ms", name, (stamp.t - start) * 1000 if stamp else None)
        time.sleep(SETTLE_S)
        if stamp is None:
            return
        pid = stamp.pid
    assert pid is not None
    del system.programs[EXTRA]
    text = system.config_text()
    start = time.time()
    atomic_write(system.config_path, text)
    system.apply()
    gone = procs.wait_gone([pid], TIMEOUT_S)
    result.add("remove", case, "ms", name, (gone - start) * 1000 if gone else None)
    time.sleep(SETTLE_S)


def runnable(count: int) -> int:
    """How many backends swarmd can run under the hard limit on open files it inherits (at most `count`).
    The soft limit is raised to the hard one (bench.run and swarmd both do)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return count
    return max(1, min(count, (hard - FD_RESERVE) // FDS_PER_BACKEND))


class PartlyEnabledSwarmd(Swarmd):
    """swarmd whose file declares every program but enables only those with an id below `enabled` (and the
    config benchmark's extra one)."""

    def __init__(self, root: Path, src: Path | None, enabled: int) -> None:
        super().__init__(root, src)
        self.enabled = enabled

    def config_text(self) -> str:
        lines = super().config_text().split("\n")
        ident = -1
        for number, line in enumerate(lines):
            if line.startswith("  ") and not line.startswith("   ") and line.endswith(":"):
                ident = int(line.strip()[:-1])
            elif line == "    enabled: true" and ident >= self.enabled and ident != EXTRA:
                lines[number] = "    enabled: false"
        return "\n".join(lines)


@contextlib.contextmanager
def running_at_most(cls: type[System], count: int, settings: Settings, notes: list[str]
                    ) -> Iterator[tuple[System, float]]:
    """`session.running(cls, count, settings)`, except that swarmd runs only the backends the limit on open
    files allows (`runnable`): the file declares `count`, the first ones are enabled. Says so in `notes`
    and the log when that is fewer than `count`."""
    enabled = runnable(count) if cls is Swarmd else count
    if enabled >= count:
        with running(cls, count, settings) as started:
            yield started
        return
    note = (f"swarmd n={count}: {enabled} of the {count} backends enabled and running, the others declared "
            f"`enabled: false` (the hard limit on open files, {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}, "
            f"allows {FDS_PER_BACKEND} per running backend for {enabled})")
    log(note)
    notes.append(note)
    system = PartlyEnabledSwarmd(settings.root, settings.swarmd_src, enabled)
    with running(cls, count, settings, system=system, started=enabled) as started:
        yield started
