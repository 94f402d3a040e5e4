"""Child processes: spawn in their own group, notice exit through pidfd, signal the group, never orphan --
not even what escapes the group.

Theory of operation
-------------------
* Spawning happens on the trio thread with `subprocess.Popen` and no preexec_fn, so CPython can use
  vfork/posix_spawn (fast at 1000 backends). Each child gets its own session (so its own process group),
  stdin from /dev/null, and stdout/stderr pipes that its shell reads chunk by chunk.
* Exit is noticed by waiting for the child's pidfd to become readable (~0.3 ms after death), then reaping
  it with a non-blocking waitpid. No polling anywhere.
* Stopping is a ladder -- `stop_signal`, then SIGKILL after `stop_timeout` -- decided by the backend's
  lifecycle (supervise/lifecycle.py) and carried out here: each signal goes to the whole group at once
  (`kill_group`), and to the start's escaped processes a moment later (a sweep, below), as systemd's
  KillMode=control-group would. When the leader exits, the rest of its group is SIGKILLed as it is reaped,
  and every other process of the start by the sweep that `wait()` waits for.

Escapes. A process that calls setsid() (a double fork, `setsid`, `nohup ... &` in its own session)
leaves the group, so group signals miss it. Every start is therefore marked in ways a descendant keeps
whatever session or group it moves to -- a `Containment` (one per daemon) owns them:

* the token: `SWARMD_START=<instance>.<n>` in the environment of each start, unique per start and per
  daemon instance, inherited by every descendant that does not clear its environment (found in
  /proc/PID/environ, which the daemon's user -- or root -- may read);
* the child subreaper (daemon only: `prctl(PR_SET_CHILD_SUBREAPER)`): an orphan is re-parented to the
  daemon, not to PID 1, so every process of every start stays a descendant of the daemon -- the set a sweep
  looks at -- and one that cleared its environment is still found: through its parent while that lives,
  through its session or group, or, orphaned with none of them, as an orphan of the daemon. The daemon
  reaps the orphans it adopts: on SIGCHLD it peeks with waitid(WNOWAIT) and reaps each zombie child that
  is not a leader (those belong to `Child.wait`, through their pidfd and Popen) nor the guardian; when a
  leader's zombie hides the rest, a sweep lists them. The daemon forks nothing but leaders and the
  guardian, and only on the trio thread, so a zombie it does not know is always an adopted orphan;
* its own cgroup, where the daemon has a delegated cgroup v2 subtree (see swarmd/cgroups.py): exact
  membership, limits (memory_max, cpu_weight), and `cgroup.kill`.

A sweep -- a look at /proc in a worker thread, batched: one sweep serves every request made before it
began -- reads, as subreaper, only what it must look at: the daemon's children lists
(/proc/PID/task/TID/children), the subtrees of its children that are not running leaders (orphans, and
what is left of ended starts: re-parented to the daemon when their leader died), and the trees of running
leaders whose escapes are to be signalled -- never the running leaders' trees otherwise, nor any other
process of the machine, so its cost follows what ended, not the size of the fleet or the machine. Where
the daemon is not the subreaper, the kernel has no children lists, or no look can be trusted (they are not
atomic snapshots: see `_look`), it reads every process instead. It labels each process with its start (leader, token, cgroup, or the start's group/session; then by
propagation to children, sessions and groups) and SIGKILLs, round after round until none is new, each
process of a start that is over. A labelled orphan is killed only when no start still running can own
it: when it is older than every running start (its start time against theirs). What it knows of running
starts is a snapshot from the event loop: a start begun after the snapshot (its token's number is higher)
and an unattributed orphan younger than the snapshot are never touched.

* Nothing outlives the daemon. A `Guardian` -- one small helper process started at daemon start, a /bin/sh
  until it acts -- holds the read end of a pipe and the list of live starts (group, token, cgroup), which
  the daemon keeps in a memfd they share. When the pipe closes (the daemon exited or was SIGKILLed) it
  becomes the Python guardian, which SIGKILLs every group, every cgroup, every process carrying one of
  the instance's tokens, and, the daemon being subreaper, every child the daemon still has, with their
  descendants, sessions and groups (supervise/guardian.py). At a clean shutdown the daemon waits for it:
  that is how the orphans nothing attributes die with the daemon.
  Registration happens right after fork, synchronously; a start leaves the list once swept. Left out: an
  orphan that cleared its environment and left its group outlives a SIGKILLed daemon unless a delegated
  cgroup holds it (systemd's unit cgroup does, under systemd).
* Children get default signal dispositions: the daemon resets inherited SIG_IGN dispositions and the
  signal mask at start (`normalize_signals`), so nothing it inherited leaks into backends; caught signals
  are reset by exec anyway.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import trio

from swarmd import accounts, cgroups
from swarmd.supervise import guardian as core
from swarmd.supervise.pipes import ExitWatcher, OnOutput, PipeGroup, PipeReader
from swarmd.types import LaunchSpec

log = logging.getLogger("swarmd.process")

#: Environment variables of the daemon's own protocol with systemd: never passed to a backend.
PRIVATE_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC",
               "WATCHDOG_PID", "SWARMD_SOCKET")



@dataclass(frozen=True)
class ExitInfo:
    """How a process ended: `code` for a normal exit, `signal` when killed by one."""

    code: int | None
    signal: int | None = None

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitInfo:
        if returncode < 0:
            return cls(None, -returncode)
        return cls(returncode, None)

    @property
    def success(self) -> bool:
        return self.code == 0

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by {self.signal_name}"
        return f"exited with status {self.code}"

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return signal.Signals(self.signal).name
        except ValueError:  # real-time signals (SIGRTMIN+n) have no name of their own
            return f"signal {self.signal}"

    def to_api(self) -> dict[str, int | str | None]:
        return {"code": self.code, "signal": self.signal_name, "text": self.describe()}


def normalize_signals() -> None:
    """Reset inherited SIG_IGN dispositions (except SIGPIPE, which Popen restores in children) and unblock
    every signal, so that children start clean whatever the daemon inherited (e.g. `nohup`, `&`)."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGPIPE):
            continue
        try:
            if signal.getsignal(sig) == signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def raise_fd_limit() -> None:
    """Each backend holds a pidfd and two pipes: lift the soft fd limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- containment: what finds a start's processes, wherever they went ---------------------------------------

GUARDIAN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guardian.py")
#: The shell that waits out the daemon's life for the guardian (see `Guardian`). Where it does not exist, the
#: guardian is started as `python guardian.py` at once.
GUARDIAN_SHELL = "/bin/sh"
#: What it runs, with $1 the Python, $2 GUARDIAN_SCRIPT, $3 the registry file's descriptor: ignore the
#: polite signals (ignored signals stay ignored across exec), wait for end of file on stdin -- the daemon's
#: end, whatever it was: it never writes there -- then become the Python guardian, the same pid.
GUARDIAN_WAIT = "trap '' HUP INT TERM QUIT; while read -r _; do :; done; exec \"$1\" -I -S \"$2\" \"$3\""


def _registry_file() -> int:
    """A new file for the guardian's registry: a memfd, else an unlinked temporary file; close-on-exec."""
    try:
        return os.memfd_create("swarmd-guardian", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        import tempfile

        with tempfile.TemporaryFile() as file:
            return os.dup(file.fileno())  # (os.dup's copy is not inheritable)


TOKEN_VAR = core.TOKEN_VAR
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants: their orphans are re-parented to it, not
    to PID 1. False where the kernel refuses."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def boot_ticks() -> int:
    """Now, in the unit of the start time in /proc/PID/stat: clock ticks since boot, rounded down as the
    kernel rounds a process's start time."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK") // 1_000_000_000


def _stat_reader() -> Callable[[str, int], bytes | None]:
    """A reader of /proc/PID/stat files that keeps the GIL through its system calls (libc through
    ctypes.PyDLL). A sweep reads one such file per process in a worker thread; os.open, os.read and
    os.close each hand the GIL back, and with another thread busy (a reload parsing a big file) each then
    waits for it up to sys.getswitchinterval(): a sweep of 100 processes took 0.3-0.6 s so, ~1 ms alone.
    Only stat files: they are read without locks a stuck process could hold (environ and cmdline need its
    mmap lock), so holding the GIL meanwhile stalls nobody. Falls back to `os` where ctypes fails."""
    try:
        import ctypes

        libc = ctypes.PyDLL(None, use_errno=True)
        c_open, c_read, c_close = libc.open, libc.read, libc.close
        c_open.argtypes, c_open.restype = [ctypes.c_char_p, ctypes.c_int], ctypes.c_int
        c_read.argtypes, c_read.restype = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t], ctypes.c_ssize_t
        c_close.argtypes, c_close.restype = [ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):
        return core._read
    flags = os.O_RDONLY | os.O_CLOEXEC

    def read(path: str, limit: int = 4096) -> bytes | None:
        fd = c_open(os.fsencode(path), flags)
        if fd < 0:
            return None
        try:
            buffer = ctypes.create_string_buffer(limit)
            size = c_read(fd, buffer, limit)
            return buffer.raw[:size] if size > 0 else None
        finally:
            c_close(fd)

    return read


_read_stat = _stat_reader()


@dataclass(eq=False, slots=True)
class Start:
    """One start of a backend as containment knows it, from just before its fork until it is swept."""

    number: int
    token: str
    born: int  # boot ticks just before the fork: every process of this start is at least as young
    cgroup: str | None = None
    pid: int = 0  # the leader, which leads the start's session and group; 0 until spawned
    forked: int = 0  # boot ticks just after the fork: the leader started within [born, forked]; 0 until then
    ending: bool = False  # the leader has exited: what is left of the start is killed


@dataclass(frozen=True)
class _View:
    """What one sweep knows of the daemon, taken on the event loop as the sweep begins."""

    daemon: int
    guardian: int | None
    instance: str
    subreaper: bool
    cgroups: bool
    starts: dict[int, tuple[int, int, bool]]  # number -> (born, leader pid, ending)
    leaders: dict[int, int]  # leader pid -> start number, while unreaped
    newest: int  # the highest start number so far: a higher one began after this view
    now: int  # boot ticks as the view was taken: a younger process may belong to a start begun since
    signals: tuple[tuple[int, int, int], ...]  # (start number, signal, its pgid): to its escaped processes
    rmdirs: tuple[str, ...]  # cgroups to remove
    # Whether the kernel lists each thread's children (/proc/PID/task/TID/children, CONFIG_PROC_CHILDREN): then a
    # subreaper's sweep reads only what it must look at (`_look`), not every process of the machine.
    children: bool = False


@dataclass
class _Swept:
    killed: list[tuple[core.Proc, object]]  # with their labels
    zombies: list[int]  # zombie children of the daemon at the last look
    kept: list[str]  # cgroups that could not be removed yet


def _ours(procs: dict[int, core.Proc], view: _View) -> dict[int, core.Proc]:
    """The processes a sweep looks at when it has read every process of the machine (`_look`'s fallback):
    as subreaper, the daemon's descendants (every process of every start is one); otherwise every process.
    The daemon and the guardian stay in (`_attribute` never labels them, and their sessions and groups spread
    no label)."""
    if not view.subreaper:
        return procs
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    found = {pid: procs[pid] for pid in (view.daemon, view.guardian) if pid in procs}
    stack = [pid for pid in children.get(view.daemon, ()) if pid != view.guardian]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found[pid] = procs[pid]
            stack.extend(children.get(pid, ()))
    return found


def _attribute(procs: dict[int, core.Proc], view: _View) -> dict[int, object]:
    """Label each process with the number of its start, or ("orphan", root pid) for a subreaper's orphan
    that nothing attributes (and what descends from it); unlabelled processes are not the daemon's."""
    # A start's group and session: while its leader lives, their number cannot be anyone else's; after, as
    # subreaper only, among the daemon's descendants (a number freed can be a stranger's new group).
    by_group = {pid: number for number, (_, pid, ending) in view.starts.items()
                if pid and (view.subreaper or not ending)}
    prefix = view.instance + "."
    seeds: dict[int, object] = {}
    for p in procs.values():
        number = view.leaders.get(p.pid) or by_group.get(p.pgrp) or by_group.get(p.sid)
        if number is None:
            token = core.read_token(p.pid)
            if token is not None and token.startswith(prefix) and token[len(prefix):].isdigit():
                number = int(token[len(prefix):])
        if number is None and view.cgroups:
            path = core.read_cgroup(p.pid)
            number = cgroups.start_number(path, view.instance) if path else None
        if number is not None:
            seeds[p.pid] = number
    barrier = {view.daemon} | ({view.guardian} if view.guardian else set())
    labels = core.propagate(procs, seeds, barrier)
    if view.subreaper:
        orphans = {p.pid: ("orphan", p.pid) for p in procs.values()
                   if p.ppid == view.daemon and p.pid not in labels and p.pid not in barrier and not p.zombie}
        if orphans:
            labels = core.propagate(procs, {**labels, **orphans}, barrier)
    return labels


#: How a sweep reads a /proc file: `(path, limit)` -> its bytes, None when it cannot be read.
Reader = Callable[[str, int], bytes | None]


_children_files: list[bool] = []  # `_children_listed`'s answer, once asked


def _children_listed() -> bool:
    """Whether this kernel lists each thread's children (/proc/PID/task/TID/children, CONFIG_PROC_CHILDREN),
    as this process's main thread shows. Asked once: a kernel does not change its mind."""
    if not _children_files:
        pid = os.getpid()
        _children_files.append(os.path.exists(f"/proc/{pid}/task/{pid}/children"))
    return _children_files[0]


def _look(view: _View, read: Reader, read_list: Reader) -> dict[int, core.Proc]:
    """The processes one round of a sweep looks at, by pid: stat files read through `read`, children lists
    through `read_list`.

    As subreaper, where the kernel lists children (`view.children`): only the daemon's descendants that can
    be anything but a running start's -- the subtrees of its children that are not live leaders (the orphans
    it adopted: escapes, and what is left of ended starts; starts begun since the view) and of the live
    leaders whose escapes are to be signalled. Nothing else is read: not the rest of the machine, nor the
    trees of the running leaders, which at 10,000 backends are nearly all of the daemon's descendants. What
    only those trees hold is no ended start's (a start's processes descend from its leader, and an orphan
    goes to the daemon, not into another start's tree) and needs no signal; a running start's escape outside
    them is looked at, and spared as before. Otherwise -- not the subreaper, no children files, or a look the
    racing lists made doubtful (`core.read_tree`), or a guardian that died meanwhile (it leaves the daemon's
    list unannounced) -- every process of the machine, narrowed by `_ours`. Either way the daemon and the
    guardian are in (`_attribute` never labels them, and their sessions and groups spread no label)."""
    if view.subreaper and view.children:
        signalled = {pgid for _, _, pgid in view.signals}
        skip = {pid for pid in view.leaders if pid not in signalled}
        if view.guardian:
            skip.add(view.guardian)
        # A leader that leaves the daemon's list while it is read can hide a sibling from that look
        # (`core.read_tree`): each one leaves by being reaped here (`Child._reap`), which asks for a sweep
        # after this one.
        found = core.read_tree(view.daemon, skip, read=read, read_list=read_list)
        if found is not None:
            for pid in (view.daemon, view.guardian):
                data = read(f"/proc/{pid}/stat", 4096) if pid else None
                p = core.parse_stat(data) if data else None
                if p is not None:
                    found[pid] = p
            if not view.guardian or (view.guardian in found and not found[view.guardian].zombie):
                return found
    return _ours(core.read_procs(read=read), view)


def _sweep(view: _View, read: Reader | None = None, read_list: Reader | None = None) -> _Swept:
    """One sweep (in a worker thread): signal the escaped processes of running starts as asked, SIGKILL
    every process of a start that is over, remove the cgroups asked. It reads /proc through `read` (stat
    files; default: `_read_stat`, which keeps the GIL through its short reads) and `read_list` (children
    lists; default: `core._read`, which hands the GIL back during each read: the daemon's own list at
    10,000 backends takes the kernel milliseconds). Raises nothing of its own: a process that is gone is
    simply not found, or not killed."""
    read = read or _read_stat
    read_list = read_list or core._read
    oldest_running = min([born for born, _, ending in view.starts.values() if not ending] + [view.now])
    signals = list(view.signals)
    labels_of: dict[tuple[int, int], object] = {}
    last: dict[int, core.Proc] = {}

    def doomed(label: object, procs: dict[int, core.Proc]) -> bool:
        if isinstance(label, int):
            start = view.starts.get(label)
            return start[2] if start is not None else label <= view.newest
        _, root = label  # type: ignore[misc]
        return procs[root].starttime < oldest_running

    def find() -> list[core.Proc]:
        nonlocal signals, last
        last = procs = _look(view, read, read_list)
        labels = _attribute(procs, view)
        for number, signum, pgid in signals:
            for pid, label in labels.items():
                p = procs[pid]
                if label == number and p.pgrp != pgid and not p.zombie:
                    core.kill(p, signum)
        signals = []
        found = [procs[pid] for pid, label in labels.items() if doomed(label, procs)]
        labels_of.update(((p.pid, p.starttime), labels[p.pid]) for p in found)
        return found

    killed = core.kill_rounds(find)
    zombies = [p.pid for p in last.values() if p.zombie and p.ppid == view.daemon]
    kept = [path for path in view.rmdirs if not core.remove_cgroup(path)]
    return _Swept([(p, labels_of[(p.pid, p.starttime)]) for p in killed], zombies, kept)


#: Seconds between a request for a sweep and the sweep (see Containment._drive).
SWEEP_DELAY = 0.02


class Containment:
    """Every start's marks (token, cgroup), the sweeps that find and kill what a start leaves, and, as
    subreaper, the reaping of adopted orphans. See the module docstring.

    `Containment()` marks starts with tokens and sweeps by them (what an in-process Fleet gets);
    `for_daemon()` adds the subreaper and the delegated cgroup where there is one."""

    def __init__(self, *, subreaper: bool = False, subtree: cgroups.Subtree | None = None) -> None:
        self.instance = secrets.token_hex(6)
        self.subreaper = subreaper
        self.subtree = subtree
        data = core._read("/proc/self/stat", 4096) if subreaper else None
        self.me = core.parse_stat(data) if data else None  # the daemon, as its guardian must know it
        self.guardian: Guardian | None = None  # set by the Guardian that owns this
        self._newest = 0
        self._starts: dict[int, Start] = {}
        self._leaders: dict[int, Start] = {}
        self._signals: list[tuple[int, int, int]] = []
        self._rmdirs: list[str] = []
        self._next: trio.Event | None = None
        self._driving = False
        self._warned: set[str] = set()

    @classmethod
    async def for_daemon(cls) -> Containment:
        """The daemon's: subreaper, and the delegated cgroup when there is one (the daemon moves into its
        `supervisor/` leaf). Logs once what it found. Call before the guardian and any backend start."""
        subreaper = become_subreaper()
        found = await trio.to_thread.run_sync(cgroups.detect)
        subtree, reason = None, found.reason
        if found.directory is not None:
            subtree = cgroups.Subtree(found.directory)
            try:
                await trio.to_thread.run_sync(subtree.setup)
            except OSError as err:
                subtree, reason = None, f"cannot move swarmd into {subtree.leaf}: {err}"
        if subtree is not None:
            log.info("each backend start gets its own cgroup under %s (controllers: %s)%s", subtree.directory,
                     " ".join(sorted(subtree.controllers)) or "none",
                     "".join(f"; {note}" for note in subtree.notes))
        elif subreaper:
            log.info("no delegated cgroup v2 (%s): escaped backend processes are found by their %s token "
                     "and, as swarmd is their child subreaper, as its orphans", reason, TOKEN_VAR)
        else:
            log.warning("neither a delegated cgroup v2 (%s) nor the child subreaper: a backend process that "
                        "leaves its process group and clears its environment cannot be found", reason)
        return cls(subreaper=subreaper, subtree=subtree)

    # -- the life of a start (on the event loop) --

    def begin(self, spec: LaunchSpec) -> Start:
        """A new start of `spec`, before its fork: its token, its cgroup with its limits. Never raises:
        a cgroup that cannot be made is logged, and the start goes on without one."""
        self._newest += 1
        number = self._newest
        start = Start(number, f"{self.instance}.{number}", boot_ticks())
        problems: list[str] = []
        if self.subtree is not None:
            try:
                start.cgroup, problems = self.subtree.create(cgroups.start_name(number, self.instance),
                                                             spec.memory_max, spec.cpu_weight)
            except OSError as err:
                problems = [f"a backend start has no cgroup of its own: {err}"]
        elif spec.memory_max or spec.cpu_weight:
            problems = ["memory_max and cpu_weight are not applied: swarmd has no delegated cgroup v2"]
        for problem in problems:
            if problem not in self._warned:
                self._warned.add(problem)
                log.warning("%s", problem)
        self._starts[number] = start
        return start

    def started(self, start: Start, pid: int) -> None:
        """The start's leader was forked: it goes into the start's cgroup, and the guardian knows it."""
        start.pid = pid
        # Not the leader's start time (a /proc read per start): the window it lies in, which is all the
        # guardian needs to tell the leader from a stranger that reused its pid (guardian._still_ours).
        start.forked = boot_ticks()
        self._leaders[pid] = start
        if start.cgroup is not None and self.subtree is not None:
            try:
                self.subtree.place(start.cgroup, pid)
            except OSError as err:
                log.warning("cannot move pid %d into %s: %s", pid, start.cgroup, err)
        if self.guardian is not None:
            self.guardian.register(pid, start)

    def abandon(self, start: Start) -> None:
        """The fork failed: forget the start."""
        self._starts.pop(start.number, None)
        if start.cgroup is not None and not cgroups.Subtree.remove(start.cgroup):
            self._rmdirs.append(start.cgroup)

    def signal(self, start: Start, signum: int) -> None:
        """Send `signum` to the start's escaped processes (its group has it already): a SIGKILL at once to
        its cgroup, and, by a sweep, to whatever of it is elsewhere."""
        if signum == signal.SIGKILL and start.cgroup is not None:
            cgroups.Subtree.kill(start.cgroup)
        if start.pid:
            self._signals.append((start.number, signum, start.pid))
            self._request()

    def leader_exited(self, start: Start) -> trio.Event:
        """The leader was reaped (its group SIGKILLed): kill the rest of the start. Returns an Event set
        once a sweep has done so (and the guardian has forgotten the start)."""
        self._leaders.pop(start.pid, None)
        start.ending = True
        if start.cgroup is not None:
            cgroups.Subtree.kill(start.cgroup)
        return self._request()

    # -- sweeps --

    def _request(self) -> trio.Event:
        """Ask for a sweep; the Event is set once a sweep that began after this call is done."""
        if self._next is None:
            self._next = trio.Event()
        event = self._next
        if not self._driving:
            self._driving = True
            trio.lowlevel.spawn_system_task(self._drive, name="swarmd sweeps")
        return event

    async def _drive(self) -> None:
        try:
            while self._next is not None:
                # A sweep reads /proc in a worker thread that holds the GIL for a while: let
                # the exit it follows be reported and its backend restarted first (and batch the exits
                # that come together, e.g. a stop of many backends).
                await trio.sleep(SWEEP_DELAY)
                done, self._next = self._next, None
                try:
                    await self._sweep_once()
                except Exception:
                    log.exception("sweeping the processes of ended backend starts failed")
                done.set()
        finally:
            self._driving = False

    async def _sweep_once(self) -> None:
        ending = [start for start in self._starts.values() if start.ending]
        guardian_pid = self.guardian.pid if self.guardian is not None else None
        rmdirs = (*self._rmdirs, *(start.cgroup for start in ending if start.cgroup))
        self._rmdirs = []
        view = _View(
            daemon=os.getpid(), guardian=guardian_pid, instance=self.instance, subreaper=self.subreaper,
            cgroups=self.subtree is not None,
            starts={n: (s.born, s.pid, s.ending) for n, s in self._starts.items()},
            leaders={pid: s.number for pid, s in self._leaders.items()}, newest=self._newest, now=boot_ticks(),
            signals=tuple(self._signals), rmdirs=rmdirs, children=self.subreaper and _children_listed())
        self._signals = []
        swept = await trio.to_thread.run_sync(_sweep, view)
        leaders = {n: pid for n, (_, pid, _) in view.starts.items()}
        for p, label in swept.killed:
            if isinstance(label, int):
                if p.pgrp != leaders.get(label):  # its group members are no news
                    log.info("killed pid %d (%s), which had escaped the process group of pid %s", p.pid,
                             p.comm, leaders.get(label, "?"))
            else:
                log.info("killed pid %d (%s), an orphan no running backend can own", p.pid, p.comm)
        for start in ending:
            self._starts.pop(start.number, None)
            if self.guardian is not None:
                self.guardian.unregister(start.pid)
        self._rmdirs.extend(swept.kept)
        if self.subreaper:
            for pid in swept.zombies:
                self._reap_one(pid)

    # -- orphans (as subreaper) --

    def _managed(self, pid: int) -> bool:
        """Whether `pid` is a child that someone else reaps: a leader (its Child) or the guardian."""
        return pid in self._leaders or (self.guardian is not None and pid == self.guardian.pid)

    def _reap_one(self, pid: int) -> None:
        if not self._managed(pid):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass

    def reap_ready(self) -> None:
        """Reap the zombies of adopted orphans, as far as waitid lets us see: a leader's zombie hides the
        rest (its Child reaps it), then a sweep lists them. A dead guardian is restarted. And remove the
        cgroups that were still busy (their last process to exit signals its parent, the daemon, once
        it has left its cgroup)."""
        if self._rmdirs and self.subtree is not None:
            self._rmdirs = [path for path in self._rmdirs if not cgroups.Subtree.remove(path)]
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            pid = info.si_pid
            if self.guardian is not None and pid == self.guardian.pid:
                self.guardian.ensure_alive()  # reaps it and starts another
                if self.guardian.pid == pid:  # (not reaped after all: look again at the next SIGCHLD)
                    return
                continue
            if self._managed(pid):
                self._request()
                return
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return

    async def reap_orphans(self) -> None:
        """The daemon's task, as subreaper: reap adopted orphans on each SIGCHLD."""
        with trio.open_signal_receiver(signal.SIGCHLD) as received:
            self.reap_ready()
            async for _ in received:
                self.reap_ready()


# -- the guardian ------------------------------------------------------------------------------------------


class Guardian:
    """Kills every registered start -- its group, its cgroup, every process carrying its token -- when the
    daemon goes away, however it goes.

    Owns one helper process, the write end of its stdin pipe (never written to: it closes when the daemon
    ends), the registry file the helper reads then (a memfd, `core.Registry`), and the daemon's
    `Containment`. The helper is a /bin/sh that waits for end of file on the pipe, then execs the Python
    guardian in its place (supervise/guardian.py): a dash waiting out the daemon's life costs ~1.7 MB of
    RSS (~0.3 MB PSS) where Python cost ~11 MB (7.5 PSS). `register`/`unregister` are one pwrite each to the memfd:
    no wake-up of the helper, no read of anything (the leader's start time is not read either: the registry
    has the window of boot ticks around its fork). A killed helper is replaced at the next `register` (or
    SIGCHLD, see `Containment.reap_ready`); the new one gets the same file, so nothing is registered again.
    """

    def __init__(self, containment: Containment | None = None) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self.containment = containment if containment is not None else Containment()
        self.containment.guardian = self
        self._registry = core.Registry(_registry_file(), self.greeting())

    def start(self) -> None:
        if self._registry.fd < 0:  # closed by `close`: what was registered is dead already
            self._registry = core.Registry(_registry_file(), self.greeting())
        fd = self._registry.fd

        def popen(argv: list[str]) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,  # no terminal signal reaches it; it acts only when the pipe closes
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, pass_fds=(fd,))

        try:
            proc = popen([GUARDIAN_SHELL, "-c", GUARDIAN_WAIT, "swarmd-guardian", sys.executable,
                          GUARDIAN_SCRIPT, str(fd)])
        except OSError:  # no shell: Python waits itself
            proc = popen([sys.executable, "-I", "-S", GUARDIAN_SCRIPT, str(fd)])
        previous, self._proc = self._proc, proc
        if previous is not None and previous.stdin is not None:
            previous.stdin.close()

    def greeting(self) -> str:
        """The registry's first records: the instance, and the daemon when it is the subreaper (then the
        guardian may kill its children)."""
        me = self.containment.me
        return f"I{self.containment.instance}\n" + (f"R{me.pid} {me.starttime} {me.sid} {me.pgrp}\n" if me else "")

    def ensure_alive(self) -> None:
        """Restart the guardian if someone killed it (with the same registry: every start is known to it)."""
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:
                log.warning("the guardian process died (%s); starting a new one", self._proc.returncode)
            self.start()

    def register(self, pgid: int, start: Start | None = None) -> None:
        """File `pgid` (the start's leader, or a bare group) with the guardian: one pwrite."""
        if self._proc is not None and self._proc.poll() is not None:
            self.ensure_alive()
        text = f"+{pgid}"
        if start is not None:
            text += f" {start.born}:{start.forked} {start.token}"
        try:
            try:
                self._registry.add(pgid, f"{text} {start.cgroup}" if start and start.cgroup else text)
            except ValueError:  # a cgroup path longer than a page (or with a newline): the rest will do
                self._registry.add(pgid, text)
        except OSError as err:
            log.warning("cannot register pid %d with the guardian: %s", pgid, err)

    def unregister(self, pgid: int) -> None:
        """Forget the oldest registration of `pgid` (its start was swept): one pwrite."""
        try:
            self._registry.remove(pgid)
        except OSError as err:
            log.warning("cannot unregister pid %d with the guardian: %s", pgid, err)

    def close(self) -> None:
        """Stop the guardian after a clean shutdown (it then kills whatever is still registered, and every
        process still carrying one of the instance's tokens)."""
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        self._registry.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None


# -- one child ---------------------------------------------------------------------------------------------


class Child:
    """One running process of a backend, its process group and (with a guardian) its start.

    Owns the Popen object, the pidfd and the output pipes. Created by `spawn()`.
    """

    __slots__ = ("popen", "pid", "pgid", "exit", "_guardian", "_start", "_swept", "_pidfd", "_watching",
                 "_watcher_left")

    def __init__(self, popen: subprocess.Popen[bytes], guardian: Guardian | None,
                 start: Start | None = None) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.pgid = popen.pid  # start_new_session: the child leads its own group
        self.exit: ExitInfo | None = None
        self._guardian = guardian
        self._start = start
        self._swept: trio.Event | None = None  # set once the rest of the start is killed
        self._pidfd = os.pidfd_open(self.pid)
        self._watching = False
        self._watcher_left: trio.Event | None = None  # made by a second waiter, set when the watcher leaves

    @property
    def running(self) -> bool:
        return self.exit is None

    @property
    def pidfd(self) -> int:
        """The leader's pidfd, until it is reaped (then closed)."""
        return self._pidfd

    async def wait(self) -> ExitInfo:
        """Wait for the leader to exit, reap it and kill what is left of its group; the rest of its start
        (what escaped the group) is being killed by a sweep then (`contained()` waits for that). Returns
        at once after the reap, so that a crashed backend restarts without waiting for a /proc walk.

        Any number of tasks may wait: one of them watches the pidfd and the others wait for it; if the
        watcher is cancelled, another waiter takes over. The killing goes on whoever is cancelled.
        """
        while self.exit is None:
            if self._watching:
                if self._watcher_left is None:
                    self._watcher_left = trio.Event()
                await self._watcher_left.wait()
                continue
            self._watching = True
            try:
                await trio.lowlevel.wait_readable(self._pidfd)
                self._reap()
            finally:
                self._watching = False
                left, self._watcher_left = self._watcher_left, None
                if left is not None:
                    left.set()
        return self.exit

    async def contained(self) -> None:
        """Return once every process of this start is gone: after `wait()`, the sweep that kills what
        escaped the group."""
        if self._swept is not None:
            await self._swept.wait()

    def _reap(self) -> None:
        returncode = self.popen.wait()  # the pidfd is readable: this does not block
        self.exit = ExitInfo.from_returncode(returncode)
        # Grandchildren may still hold the group (and the port, and GPU memory): they go with the leader.
        self.kill_group(signal.SIGKILL)
        os.close(self._pidfd)
        if self._guardian is None:
            return
        if self._start is None:
            self._guardian.unregister(self.pgid)
            return
        # And so does everything else of the start, wherever it went (the guardian forgets it after).
        self._swept = self._guardian.containment.leader_exited(self._start)

    def kill_group(self, sig: int) -> bool:
        """Send `sig` to the whole process group. False when the group is already gone."""
        try:
            os.killpg(self.pgid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return False

    def signal_escapes(self, sig: int) -> None:
        """Send `sig` to the processes of this start outside its group (soon, from a sweep)."""
        if self._guardian is not None and self._start is not None:
            self._guardian.containment.signal(self._start, sig)


_PRIVATE_ENV_BYTES = frozenset(name.encode() for name in PRIVATE_ENV)


def _popen_environment(spec: LaunchSpec, extra: dict[str, str]) -> dict[bytes, bytes]:
    """A backend's environment, as the bytes Popen passes to exec: the daemon's (less its private protocol
    variables), less `spec.unset_env`, plus `spec.env`, plus `extra`. Built from `os.environb`: os.environ
    would decode every entry and Popen encode it again, a tenth of a millisecond per start."""
    env = {k: v for k, v in os.environb.items() if k not in _PRIVATE_ENV_BYTES}
    for name in spec.unset_env:
        env.pop(os.fsencode(name), None)
    for name, value in (*spec.env.items(), *extra.items()):
        env[os.fsencode(name)] = os.fsencode(value)
    return env


def spawn(spec: LaunchSpec, guardian: Guardian | None) -> tuple[Child, int, int]:
    """Start the process described by `spec` in a new session.

    Returns the Child and the read ends of its stdout and stderr pipes (the caller reads and closes them).
    Raises OSError when the process cannot be started (missing executable, bad cwd, permission); the
    message names the program or directory. Raises `accounts.AccountError` (a ValueError) when `spec.user`
    or `spec.group` cannot be used now: swarmd is not root, or the name is not in the accounts cache.

    With `spec.user`, the child runs with that user's uid, primary gid (or `spec.group`'s) and login groups,
    and HOME, USER and LOGNAME set to the user's (unless `spec.env` sets them). The ids come from the cache
    that validation filled (`accounts.run_as`): never a user-database look-up here, on the event loop. The
    change of ids happens in the child after its chdir (CPython's order), so the working directory must be
    one the user may enter for what it runs there to work.
    """
    ids = accounts.run_as(spec.user, spec.group)
    extra = {name: value for name, value in ids.env if name not in spec.env}
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    start = guardian.containment.begin(spec) if guardian is not None else None  # never raises
    if start is not None:
        extra[TOKEN_VAR] = start.token  # last: neither the daemon's environment nor the spec sets it
    env = _popen_environment(spec, extra)
    try:
        popen = subprocess.Popen(
            list(spec.argv), cwd=spec.cwd, env=env,
            stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
            start_new_session=True, close_fds=True, restore_signals=True,
            # ids as numbers: given names, Popen would look them up itself, here on the event loop
            user=ids.uid, group=ids.gid,
            extra_groups=list(ids.extra_groups) if ids.extra_groups is not None else None,
        )
    except BaseException:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        if guardian is not None and start is not None:
            guardian.containment.abandon(start)
        raise
    os.close(out_w)
    os.close(err_w)
    if guardian is not None and start is not None:
        guardian.containment.started(start, popen.pid)  # its cgroup, and the guardian's list
    return Child(popen, guardian, start), out_r, err_r


def describe_spawn_error(err: Exception, spec: LaunchSpec) -> str:
    """A message a person can act on for a start that failed before exec (from the error alone: the
    daemon does not go looking at paths a setting names)."""
    program = spec.argv[0] if spec.argv else "?"
    if not isinstance(err, OSError):
        return f"cannot start {program!r}: {err}"
    names_cwd = spec.cwd is not None and err.filename == spec.cwd
    if isinstance(err, FileNotFoundError) and names_cwd:
        return f"cannot start: working directory {spec.cwd!r} does not exist"
    if isinstance(err, NotADirectoryError) and names_cwd:
        return f"cannot start: working directory {spec.cwd!r} is not a directory"
    if isinstance(err, FileNotFoundError):
        return f"cannot start: program {program!r} not found"
    if isinstance(err, PermissionError):
        return f"cannot start {program!r}: permission denied ({err.filename or program})"
    return f"cannot start {program!r}: {os.strerror(err.errno) if err.errno else err}"


class ChildProcess:
    """A backend's process as its shell drives it (`supervise.shell.Process`): the Child and the read ends
    of its output pipes, which the daemon's `PipeReader` reads and closes."""

    __slots__ = ("child", "pid", "_fds", "_reader")

    def __init__(self, child: Child, out_fd: int, err_fd: int, reader: PipeReader) -> None:
        self.child = child
        self.pid = child.pid
        self._fds = (out_fd, err_fd)
        self._reader = reader

    @classmethod
    def start(cls, spec: LaunchSpec, guardian: Guardian | None, reader: PipeReader) -> ChildProcess:
        """Spawn `spec` (see `spawn`); `reader` will read its output. Raises OSError, ValueError or
        SubprocessError."""
        return cls(*spawn(spec, guardian), reader)

    def on_exit(self, watcher: ExitWatcher) -> None:
        """Call `watcher.exited()` once the leader has exited -- from the daemon's reader: no task waits
        meanwhile -- or `watcher.cancelled()` if the reader is cancelled from outside first
        (`PipeReader.watch_exit`). Raises OSError when the pidfd cannot be watched."""
        self._reader.watch_exit(self.child.pidfd, watcher)

    def wait(self) -> Coroutine[Any, Any, ExitInfo]:
        if self.child.exit is None:  # the reaper closes the pidfd: the reader must let go of it first
            self._reader.forget_exit(self.child.pidfd)
        return self.child.wait()  # (its coroutine as is: no frame of ours waits on it, for each backend)

    async def contained(self) -> None:
        await self.child.contained()

    def signal_group(self, signum: int) -> None:
        # Only while the leader is unreaped: after that its pgid may belong to someone else (and `wait`
        # kills every process of the start anyway).
        if self.child.running:
            self.child.kill_group(signum)
            self.child.signal_escapes(signum)  # the start's processes outside the group, a moment later

    def read_output(self, on_output: OnOutput) -> PipeGroup:
        """Have the daemon's reader deliver its output to `on_output` from now on (see `PipeReader.watch`).
        Raises OSError when the pipes cannot be watched (they are closed then)."""
        try:
            return self._reader.watch(((self._fds[0], "stdout"), (self._fds[1], "stderr")), on_output)
        except OSError:
            for fd in self._fds:
                os.close(fd)
            raise
