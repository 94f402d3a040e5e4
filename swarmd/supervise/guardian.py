"""The guardian: a tiny process that kills every backend's processes when the daemon goes away -- and the
stdlib-only core that finds a start's processes, which the daemon imports too.

Started by the daemon as `/bin/sh -c '<wait>' swarmd-guardian <python> guardian.py <fd>` (process.py's
`Guardian`), with a pipe on stdin whose write end only the daemon holds and never writes to: the shell
ignores the terminal's and systemd's polite signals, waits for end of file on the pipe -- the daemon's end,
however it ends, closes it -- then execs `<python> -I -S guardian.py <fd>`, the same pid. What to kill is
in a file the two share, a memfd the guardian has at descriptor <fd>: the daemon keeps its orders there
(`Registry`), one `pwrite` each, and the guardian reads the file once, when the pipe has closed. Why: a
Python interpreter waiting out the daemon's life costs ~11 MB of RSS where a dash costs ~1.7 MB, and a line
on a pipe per start and per end woke the guardian every time (~80 us of the daemon's per write), where a
pwrite to a memfd wakes nobody. A record never straddles a page and a pwrite within a page is done or not
done, so a daemon killed at any instant leaves a file that reads as the orders it had given. (Where
/bin/sh does not exist, the daemon starts Python directly: it waits on the same pipe, then reads the same
file.)

The file is a whole number of SLOT-byte slots. Every record is one line -- its text, padded with spaces,
ending in a newline -- that fills one or more whole slots; a free slot is a blank line. The records:

    I<instance>                   the daemon's instance: its starts' tokens are `<instance>.<n>`
    R<pid> <start> <sid> <pgrp>   the daemon (its pid, start time, session, group -- never read from
                                  /proc later: by then the pid may be someone else's) is its backends'
                                  child subreaper: its children are theirs
    +<pgid> <lo>:<hi> [<token> [<cgroup>]]
                                  a start is running or not yet swept: its leader leads process group and
                                  session <pgid> and started between boot ticks <lo> and <hi> (the daemon's
                                  clock just before and just after the fork; a single number is both; 0:
                                  unknown)

A start that is over (its leftovers were killed) is a blank again.

When the pipe closes -- the daemon exited, cleanly or by SIGKILL -- the guardian SIGKILLs every listed
group (while its number is still the start's: its leader alive and started within its window, or dead) and
every listed cgroup (`cgroup.kill`), then, round after round until a round finds nothing new, every process
that carries one of the instance's tokens in its environment (a process that left its group with setsid or
a double fork keeps it), every child the daemon still has (after `R`: the orphans it adopted; on a clean
shutdown the daemon waits for the guardian, so all of them), and everything reachable from those: their
children, their sessions, their groups -- and, where the starts have cgroups, every other process of the
`supervisor/` leaf the guardian itself lives in: only the daemon and the guardian belong there, so anything
else is a leader's child forked before the leader was moved into its own cgroup (the race swarmd/cgroups.py
documents), which may have cleared its environment and left its group and the daemon's tree. Then it
removes the listed cgroups.
It ignores the terminal's and systemd's polite signals (the shell did already, and ignored signals stay
ignored across exec): its only job is to outlive the daemon by a few milliseconds.

Stdlib only and no imports of swarmd: it starts in a few milliseconds with site disabled.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Container

#: The environment variable that marks every process of a backend start: `<instance>.<n>`.
TOKEN_VAR = "SWARMD_START"
_TOKEN_KEY = TOKEN_VAR.encode() + b"="
#: At most this many rounds of look-and-kill (a round finds what forked while the last one killed).
ROUNDS = 10


class Proc:
    """One process as /proc/PID/stat shows it. (A plain class, not a typing.NamedTuple: importing typing
    would cost the guardian 1.7 MB of its ~10.)"""

    __slots__ = ("pid", "ppid", "pgrp", "sid", "starttime", "zombie", "comm")

    def __init__(self, pid: int, ppid: int, pgrp: int, sid: int, starttime: int, zombie: bool,
                 comm: str) -> None:
        self.pid, self.ppid, self.pgrp, self.sid = pid, ppid, pgrp, sid
        self.starttime = starttime  # clock ticks after boot
        self.zombie, self.comm = zombie, comm

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Proc) and all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __hash__(self) -> int:
        return hash((self.pid, self.starttime))

    def __repr__(self) -> str:
        return f"Proc({', '.join(f'{f}={getattr(self, f)!r}' for f in self.__slots__)})"


def _read(path: str, limit: int = 1 << 22) -> bytes | None:
    """The whole file (up to `limit` bytes), or None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        size = 0
        while size < limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def parse_stat(data: bytes) -> Proc | None:
    """A Proc from the text of /proc/PID/stat (the command name may hold spaces and parentheses)."""
    head, sep, rest = data.rpartition(b")")
    pid_text, _, comm = head.partition(b" (")
    fields = rest.split()
    if not sep or len(fields) < 20:
        return None
    try:
        return Proc(int(pid_text), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]),
                    fields[0] in (b"Z", b"X"), comm.decode("utf-8", "replace"))
    except ValueError:
        return None


def read_procs(proc: str = "/proc", read=None) -> dict[int, Proc]:
    """Every process of the machine (of this pid namespace), by pid. `read(path, limit)` reads each stat
    file (default: `_read`)."""
    read = read or _read
    found = {}
    try:
        names = os.listdir(proc + "/")  # (a path under /proc/, as everything else the daemon reads there)
    except OSError:
        return found
    for name in names:
        if name.isdigit():
            data = read(f"{proc}/{name}/stat", 4096)
            parsed = parse_stat(data) if data else None
            if parsed is not None:
                found[parsed.pid] = parsed
    return found


#: At most this many looks at a tree in `read_tree` before it gives up (each one races what forks and dies).
LOOKS = 5


def read_children(pid: int, proc: str = "/proc",
                  read: Callable[[str, int], bytes | None] | None = None) -> list[int] | None:
    """The children of process `pid` -- of each of its threads: a child is listed under the thread that forked
    it, an orphan adopted by a subreaper under its first live thread -- from /proc/PID/task/TID/children
    (CONFIG_PROC_CHILDREN). `read(path, limit)` reads each whole file (default `_read`; b"" when empty).

    None when they cannot be told: the process or a thread is gone, a thread ended while the lists were read
    (it hands its children to another thread, perhaps one read already), or the kernel has no such files. A
    thread that begins meanwhile is not waited for: its children are younger than this look."""
    read = read or _read
    task = f"{proc}/{pid}/task"
    try:
        threads = os.listdir(task)
    except OSError:
        return None
    children = []
    for tid in threads:
        data = read(f"{task}/{tid}/children", 1 << 22)
        if data is None:
            return None
        children.extend(int(word) for word in data.split())
    try:
        if not set(threads) <= set(os.listdir(task)):
            return None
    except OSError:
        return None
    return children


def _children_stats(parent: int, skip: Container[int], proc: str, read: Callable[[str, int], bytes | None],
                    read_list: Callable[[str, int], bytes | None] | None) -> dict[int, Proc] | None:
    """The children of `parent` but those in `skip`, each with its stat read after the list. A child listed
    that is gone by then, or is no longer `parent`'s, may have hidden a sibling (the kernel lists by position,
    and a child that leaves shifts the rest): then the list is read again. None when it never comes out clean
    in a few tries, or the list cannot be read."""
    for _ in range(3):
        listed = read_children(parent, proc, read_list)
        if listed is None:
            return None
        found = {}
        for pid in listed:
            if pid in skip or pid in found:
                continue
            data = read(f"{proc}/{pid}/stat", 4096)
            p = parse_stat(data) if data else None
            if p is None or p.ppid != parent:
                break
            found[pid] = p
        else:
            return found
    return None


def _look_below(root: int, skip: Container[int], proc: str, read: Callable[[str, int], bytes | None],
                read_list: Callable[[str, int], bytes | None] | None) -> dict[int, Proc] | None:
    """One look for `read_tree`: the processes below `root` (less the subtrees of `skip`), or None when a list
    could not be read clean."""
    below = _children_stats(root, skip, proc, read, read_list)
    if below is None:
        return None
    found = dict(below)
    stack = [p for p in below.values() if not p.zombie]  # a zombie's children left at its death
    while stack:
        parent = stack.pop()
        children = _children_stats(parent.pid, found, proc, read, read_list)
        if children is None:
            return None
        found.update(children)
        stack.extend(p for p in children.values() if not p.zombie)
    return found


def read_tree(root: int, skip: Container[int] = frozenset(), proc: str = "/proc",
              read: Callable[[str, int], bytes | None] | None = None,
              read_list: Callable[[str, int], bytes | None] | None = None,
              looks: int = LOOKS) -> dict[int, Proc] | None:
    """The descendants of process `root` by pid, less the children of `root` named in `skip` and their
    descendants, whose files are never read: only the stat files (through `read(path, limit)`, default `_read`)
    and children lists (`read_children` through `read_list`) of what is returned and of `root`'s threads --
    and the stat of a pid listed as a child that was gone by the time its stat was read (read, never used).

    The children lists are no atomic snapshot: a child that leaves a list while it is read can hide a sibling
    (each listed child's stat is checked for that, `_children_stats`), and a process that dies hands its
    children to its nearest living subreaper, perhaps after that one's list was read. So a look is trusted
    only when it found nothing (whatever lived below `root` throughout would have been listed in `root`'s
    list) or when the next look finds the same live processes (whoever moved in between shows up in the
    second, or dies in it). A child in `skip` that leaves `root`'s list can hide a sibling unseen: the caller
    must learn of each such departure otherwise (the daemon reaps its leaders itself, and asks for another
    sweep). None when no look could be trusted after `looks` of them: the caller reads every process instead
    (`read_procs`)."""
    read = read or _read
    previous = None
    for _ in range(looks):
        found = _look_below(root, skip, proc, read, read_list)
        if found is None:
            previous = None
            continue
        live = {(p.pid, p.starttime) for p in found.values() if not p.zombie}
        if not found or live == previous:
            return found
        previous = live
    return None


def token_in(environ: bytes) -> str | None:
    """The value of SWARMD_START in the text of a /proc/PID/environ (the first one, as getenv sees it)."""
    if environ.startswith(_TOKEN_KEY):
        begin = len(_TOKEN_KEY)
    else:
        at = environ.find(b"\0" + _TOKEN_KEY)
        if at < 0:
            return None
        begin = at + 1 + len(_TOKEN_KEY)
    end = environ.find(b"\0", begin)
    return environ[begin:end if end >= 0 else len(environ)].decode("utf-8", "replace")


def read_token(pid: int, proc: str = "/proc") -> str | None:
    """The start token of process `pid`: None without one, or when its environment cannot be read (another
    user's process, unless root; a zombie)."""
    environ = _read(f"{proc}/{pid}/environ")
    return token_in(environ) if environ else None


def read_cgroup(pid: int, proc: str = "/proc") -> str | None:
    """The cgroup v2 path of process `pid` (`/system.slice/x.service/start-1`), None when unknown."""
    data = _read(f"{proc}/{pid}/cgroup", 65536)
    for line in (data or b"").splitlines():
        if line.startswith(b"0::"):
            return line[3:].decode("utf-8", "replace")
    return None


def propagate(procs: dict[int, Proc], seeds: dict[int, object], barrier: set[int]) -> dict[int, object]:
    """Label every process reachable from a seed: a process gets the label of its parent, and every process
    of a session or group gets the label of a labelled member. Seeds keep their own labels. The processes
    of `barrier` (the daemon, the guardian) are never labelled, and their sessions and groups never spread
    a label."""
    children: dict[int, list[int]] = {}
    by_sid: dict[int, list[int]] = {}
    by_pgrp: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
        by_sid.setdefault(p.sid, []).append(p.pid)
        by_pgrp.setdefault(p.pgrp, []).append(p.pid)
    closed_sids = {0} | {procs[pid].sid for pid in barrier if pid in procs}
    closed_pgrps = {0} | {procs[pid].pgrp for pid in barrier if pid in procs}
    labels = {pid: label for pid, label in seeds.items() if pid in procs and pid not in barrier}
    queue = deque(labels)
    while queue:
        pid = queue.popleft()
        label, p = labels[pid], procs[pid]
        reached = list(children.get(pid, ()))
        if p.sid not in closed_sids:
            closed_sids.add(p.sid)  # one expansion per session is enough
            reached += by_sid.get(p.sid, ())
        if p.pgrp not in closed_pgrps:
            closed_pgrps.add(p.pgrp)
            reached += by_pgrp.get(p.pgrp, ())
        for other in reached:
            if other not in labels and other not in barrier:
                labels[other] = label
                queue.append(other)
    return labels


def kill(p: Proc, signum: int = signal.SIGKILL, proc: str = "/proc") -> bool:
    """Send `signum` to the process `p` describes -- through a pidfd checked against its start time, so
    that a pid reused since the snapshot is never hit. False when it is gone."""
    try:
        fd = os.pidfd_open(p.pid)
    except (AttributeError, OSError) as err:
        if isinstance(err, ProcessLookupError):
            return False
        try:  # no pidfd (old kernel): the plain way
            os.kill(p.pid, signum)
            return True
        except OSError:
            return False
    try:
        data = _read(f"{proc}/{p.pid}/stat", 4096)
        now = parse_stat(data) if data else None
        if now is None or now.starttime != p.starttime:
            return False
        signal.pidfd_send_signal(fd, signum)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def cgroup_pids(directory: str) -> list[int]:
    data = _read(os.path.join(directory, "cgroup.procs"))
    return [int(line) for line in (data or b"").split() if line.isdigit()]


def kill_cgroup(directory: str) -> None:
    """SIGKILL every process of a cgroup: `cgroup.kill` (Linux 5.14+), else each pid it lists, a few times
    over (what forks meanwhile is listed next time)."""
    try:
        fd = os.open(os.path.join(directory, "cgroup.kill"), os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        fd = -1
    if fd >= 0:
        try:
            os.write(fd, b"1")
            return
        except OSError:
            pass
        finally:
            os.close(fd)
    for _ in range(ROUNDS):
        pids = cgroup_pids(directory)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def remove_cgroup(directory: str, patience: float = 0.0) -> bool:
    """rmdir a cgroup, retrying for `patience` seconds while its killed processes finish dying."""
    deadline = time.monotonic() + patience
    while True:
        try:
            os.rmdir(directory)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)


def kill_rounds(find, proc: str = "/proc") -> list[Proc]:
    """SIGKILL what `find()` returns, again and again until it returns nothing new. The killed Procs."""
    killed: dict[tuple[int, int], Proc] = {}
    for _ in range(ROUNDS):
        fresh = [p for p in find() if not p.zombie and (p.pid, p.starttime) not in killed]
        if not fresh:
            break
        for p in fresh:
            killed[(p.pid, p.starttime)] = p
            kill(p, signal.SIGKILL, proc)
    return list(killed.values())


# -- the guardian process -------------------------------------------------------------------------------------


def born_within(starttime: int, window: tuple[int, int] | int) -> bool:
    """Whether a process that started at `starttime` (boot ticks) may be the leader `window` describes: the
    boot ticks `(lo, hi)` the daemon read just before and just after the fork (one number: both), (0, 0) or 0
    when unknown -- then any process may be."""
    lo, hi = (window, window) if isinstance(window, int) else window
    return not hi or lo <= starttime <= hi


def _still_ours(pgid: int, window: tuple[int, int] | int, proc: str = "/proc") -> bool:
    """Whether group/session number `pgid` is still the start's: its leader is alive and started within
    `window` (`born_within`), or it is gone -- then the number stays reserved while members of the group live.

    A window, not the leader's exact start time, so that the daemon need not read /proc per start. It is
    enough: the daemon cannot have reaped the leader before it read the window's end, so a stranger that
    reuses the pid started after that -- out of the window, unless within the same clock tick, which would
    take a full wrap-around of the pid numbers within milliseconds."""
    data = _read(f"{proc}/{pgid}/stat", 4096)
    now = parse_stat(data) if data else None
    return now is None or born_within(now.starttime, window)


#: What the guardian is told of a start: (pgid, its leader's window of boot ticks, token, cgroup directory).
Listed = tuple[int, tuple[int, int], str, str]


def kill_everything(instance: str, starts: list[Listed], daemon: Proc | None = None,
                    proc: str = "/proc") -> None:
    """What the guardian does when the daemon is gone: see the module docstring. `starts` lists each start's
    pgid, its leader's window of start times ((0, 0): unknown), token and cgroup directory (either possibly
    empty); a pgid may be listed twice (a start's leader was reaped and its pid reused before it was swept).
    `daemon` (as the daemon told), when it is the backends' subreaper: its children are killed too -- while
    its pid is still its own (the same start time) and it is not PID 1."""
    me = os.getpid()
    for pgid, window, _, _ in starts:
        if _still_ours(pgid, window, proc):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
    cgroups = [cgroup for _, _, _, cgroup in starts if cgroup]
    for cgroup in cgroups:
        kill_cgroup(cgroup)
    prefix = f"{instance}." if instance else None
    leaf = supervisor_leaf(cgroups, me)

    def find() -> list[Proc]:
        procs = read_procs(proc)
        groups = {pgid for pgid, window, _, _ in starts
                  if pgid not in procs or born_within(procs[pgid].starttime, window)}
        barrier = {me}
        parent = None  # the daemon, while its pid is still its own
        if daemon is not None and daemon.pid > 1 and \
                procs.setdefault(daemon.pid, daemon).starttime == daemon.starttime:
            parent = daemon.pid  # (gone, it stays in the table: its session and group spread nothing)
            barrier.add(parent)
        seeds: dict[int, object] = {}
        for p in procs.values():
            if p.pgrp in groups or p.sid in groups or (parent is not None and p.ppid == parent):
                seeds[p.pid] = True
        for cgroup in cgroups:
            seeds.update((pid, True) for pid in cgroup_pids(cgroup) if pid in procs)
        if leaf is not None:  # strays of the supervisor/ leaf: never the guardian, its parent or the daemon
            spared = {me, os.getppid(), parent if parent is not None else me}
            seeds.update((pid, True) for pid in cgroup_pids(leaf) if pid in procs and pid not in spared)
        if prefix:
            for pid in procs:
                if pid not in seeds:
                    token = read_token(pid, proc)
                    if token is not None and token.startswith(prefix):
                        seeds[pid] = True
        return [procs[pid] for pid in propagate(procs, seeds, barrier)]

    kill_rounds(find, proc)
    for cgroup in cgroups:
        remove_cgroup(cgroup, patience=2.0)


def supervisor_leaf(cgroups: list[str], me: int) -> str | None:
    """The daemon's `supervisor/` leaf -- the sibling of the starts' cgroups -- when the guardian (`me`) is
    in it; None otherwise (no cgroups listed, or a layout this does not know: then nothing is killed for
    being there)."""
    if not cgroups:
        return None
    leaf = os.path.join(os.path.dirname(cgroups[0]), "supervisor")
    return leaf if me in cgroup_pids(leaf) else None


class Orders:
    """What the daemon has told the guardian: the records of the module docstring."""

    def __init__(self) -> None:
        self.instance = ""
        self.starts: list[Listed] = []
        self.daemon: Proc | None = None

    def take(self, text: str) -> None:
        """One record (without its padding and newline); a malformed one is ignored."""
        try:
            if text[:1] == "I":
                self.instance = text[1:]
            elif text[:1] == "R":
                pid, start, sid, pgrp = (int(field) for field in text[1:].split())
                self.daemon = Proc(pid, 0, pgrp, sid, start, False, "swarmd")
            elif text[:1] == "+":
                pgid, window, token, cgroup = (text[1:].split(" ", 3) + ["", "", ""])[:4]
                lo, _, hi = window.partition(":")
                low = int(lo or 0)
                self.starts.append((int(pgid), (low, int(hi) if hi else low), token, cgroup))
        except ValueError:
            pass


# -- the registry file: the daemon writes it, the guardian reads it ------------------------------------------

#: The registry file's unit: a record fills one or more whole slots.
SLOT = 128
#: Slots in 4096 bytes, the smallest page there is: no record straddles a multiple of 4096 (see `Registry`).
PAGE_SLOTS = 4096 // SLOT
#: The longest record text (in bytes) a Registry takes: one that fills a page.
LONGEST = PAGE_SLOTS * SLOT - 1
_BLANK = b" " * (SLOT - 1) + b"\n"


def read_orders(fd: int) -> Orders:
    """The orders in the registry file at `fd`, read from offset 0 to its end: every non-blank line, its
    padding stripped (what follows the last newline, were there any, is no record)."""
    chunks = []
    offset = 0
    while True:
        try:
            chunk = os.pread(fd, 1 << 20, offset)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    data = b"".join(chunks)
    orders = Orders()
    for line in data[:data.rfind(b"\n") + 1].split(b"\n"):
        text = line.lstrip(b"\0").rstrip(b" ")  # (\0: a hole, had a write beyond the end ever failed)
        if text:
            orders.take(text.decode("utf-8", "surrogateescape"))
    return orders


class Registry:
    """The daemon's side of the registry file (module docstring): which slots hold what, which are free. The
    file is written with one pwrite per `add` and per `remove`, and never read back.

    A record takes a free run of exactly its size (the one freed last), else the first slots of a longer
    free run, else new slots at the end of the file. Free runs are never merged: nearly every record takes
    one slot, or as many as the others (the same cgroup directory, numbers of about the same length). No run
    straddles a multiple of 4096 bytes: where one would, the end of the file moves to the boundary and the
    slots skipped are a free run. A write within a page is whole or not done however its writer dies (the
    kernel copies a page at a time and looks for a fatal signal between pages), so whatever instant the
    daemon dies at, the file holds every record it finished adding and no part of another."""

    def __init__(self, fd: int, header: str = "") -> None:
        self.fd = fd
        self.end = 0  # slots in the file
        self._free: dict[int, list[int]] = {}  # run length -> the first slots of free runs of that length
        # key -> its records' (first slot, slots), oldest first
        self._held: dict[int, list[tuple[int, int]]] = {}
        for line in header.splitlines():
            if line:
                self._place(line)

    def add(self, key: int, text: str) -> None:
        """Write the record `text` (no newline in it; LONGEST bytes at most), filed under `key` (a pgid: one
        may have several records). Raises OSError when the file cannot be written (nothing is added then),
        ValueError when the text is too long. Nothing at all once closed."""
        if self.fd >= 0:
            self._held.setdefault(key, []).append(self._place(text))

    def remove(self, key: int) -> bool:
        """Blank the oldest record filed under `key`. False when there is none (or the registry is closed).
        Raises OSError when the file cannot be written (the record stays filed then)."""
        runs = self._held.get(key)
        if not runs or self.fd < 0:
            return False
        first, count = runs[0]
        os.pwrite(self.fd, _BLANK * count, first * SLOT)
        del runs[0]
        if not runs:
            del self._held[key]
        self._free.setdefault(count, []).append(first)
        return True

    def records(self) -> int:
        return sum(len(runs) for runs in self._held.values())

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _place(self, text: str) -> tuple[int, int]:
        data = text.encode("utf-8", "surrogateescape")
        if b"\n" in data or len(data) > LONGEST:
            raise ValueError(f"not a record: {text[:80]!r}")
        count = (len(data) + SLOT) // SLOT  # the text and its newline, in whole slots
        record = data + b" " * (count * SLOT - len(data) - 1) + b"\n"
        free = self._free.get(count)
        if free:
            return self._write_in(free, record), count
        longer = [length for length, runs in self._free.items() if length > count and runs]
        if longer:
            length = min(longer)
            first = self._write_in(self._free[length], record)
            self._free.setdefault(length - count, []).append(first + count)
            return first, count
        first = self.end
        gap = 0
        if first // PAGE_SLOTS != (first + count - 1) // PAGE_SLOTS:
            gap = PAGE_SLOTS - first % PAGE_SLOTS
        os.pwrite(self.fd, _BLANK * gap + record, first * SLOT)
        if gap:
            self._free.setdefault(gap, []).append(first)
        self.end = first + gap + count
        return first + gap, count

    def _write_in(self, runs: list[int], record: bytes) -> int:
        """Write `record` at the last of the free `runs` (taken from them; given back if the write fails);
        returns its first slot."""
        first = runs.pop()
        try:
            os.pwrite(self.fd, record, first * SLOT)
        except OSError:
            runs.append(first)
            raise
        return first


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    fd = int(sys.argv[1]) if len(sys.argv) > 1 else 3  # the registry file
    while True:  # wait for the daemon's end (started by /bin/sh, stdin is at its end already)
        try:
            if not os.read(0, 65536):
                break
        except OSError:
            break
    orders = read_orders(fd)
    kill_everything(orders.instance, orders.starts, orders.daemon)


if __name__ == "__main__":
    main()
