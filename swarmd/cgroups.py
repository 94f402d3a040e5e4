"""cgroup v2, where the daemon has a delegated subtree: one cgroup per backend start.

Detection (`detect`): the daemon's own cgroup is the `0::` line of /proc/self/cgroup, found under the
cgroup2 mount that /proc/self/mountinfo lists (usually /sys/fs/cgroup; /sys/fs/cgroup/unified on hybrid
systems). It is delegated -- systemd's `Delegate=yes` -- when that directory, its `cgroup.procs` and its
`cgroup.subtree_control` are writable by the daemon and no other process lives in it. Nothing requires
it: without one the daemon finds a start's processes by their token and as orphans of its own (see
supervise/process.py), and says so once at start.

Set-up (`Subtree.setup`), once, before the guardian or any backend starts:

* the daemon moves itself into a leaf, `supervisor/` (cgroup v2's "no internal processes" rule: a cgroup
  that hands controllers to its children holds no process itself); the guardian, forked later, lives there
  too;
* cgroups `start-*` left by an earlier daemon in the same subtree are killed and removed;
* the controllers a limit needs (`memory` for memory.max, `cpu` for cpu.weight) are enabled for the
  children, those of them that `cgroup.controllers` offers.

Each backend start gets `start-<n>-<instance>/`, made before its fork with its limits written
(`memory.max`, `cpu.weight`; a limit whose controller is missing is reported, not fatal). The leader's pid
is written to its `cgroup.procs` right after `subprocess.Popen` returns, from the event loop: subprocess
without preexec_fn cannot run code in the child before exec, a wrapper program cannot migrate a backend
that runs as another user (moving a process needs write access to the common ancestor's cgroup.procs), and
CLONE_INTO_CGROUP is out of reach from Python. The race this leaves -- a program that forks within
microseconds of its exec leaves that child in `supervisor/` -- is narrowed by moving the leader's group
members found in `supervisor/` along with it, and closed by the daemon's other nets (the token, the group,
the subreaper), which find such a process wherever it is -- and, once the daemon is gone, by the guardian,
which kills every process of `supervisor/` but itself and the daemon (`guardian.supervisor_leaf`). Each write is a kernfs operation of tens of
microseconds (a migration waits for an RCU grace period now and then: ~10 ms, measured).

A start is killed with `cgroup.kill` (Linux 5.14+; before that, each pid of `cgroup.procs`, a few times
over) and its directory removed once empty.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from swarmd.supervise.guardian import cgroup_pids, kill_cgroup, parse_stat, remove_cgroup

log = logging.getLogger("swarmd.cgroups")

SUPERVISOR = "supervisor"
START_PREFIX = "start-"
#: The controllers the limits need: memory.max, cpu.weight.
WANTED = ("memory", "cpu")
_START_NAME = re.compile(r"start-([0-9]+)-([0-9a-f]+)")


def start_name(number: int, instance: str) -> str:
    return f"{START_PREFIX}{number}-{instance}"


def start_number(path: str, instance: str) -> int | None:
    """The start number of a cgroup path named by `start_name` for `instance`, else None."""
    match = _START_NAME.fullmatch(os.path.basename(path.rstrip("/")))
    if match is None or match[2] != instance:
        return None
    return int(match[1])


def own_cgroup(proc_self_cgroup: str) -> str | None:
    """The cgroup v2 path in the text of /proc/self/cgroup (the `0::` line), None without cgroup v2."""
    for line in proc_self_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def cgroup2_mounts(mountinfo: str) -> list[tuple[str, str]]:
    """(root, mount point) of every cgroup2 mount in the text of /proc/self/mountinfo."""
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, after = left.split(), right.split()
        if sep and len(fields) >= 5 and after and after[0] == "cgroup2":
            found.append((_unescape(fields[3]), _unescape(fields[4])))
    return found


def cgroup_directory(path: str, mounts: list[tuple[str, str]]) -> str | None:
    """Where the cgroup `path` is in the file system: under the cgroup2 mount whose root contains it."""
    for root, mountpoint in mounts:
        if root == "/" or path == root or path.startswith(root.rstrip("/") + "/"):
            rest = path[len(root):] if root != "/" else path
            return os.path.normpath(mountpoint + "/" + rest.lstrip("/"))
    return None


@dataclass(frozen=True)
class Detected:
    """The daemon's delegated cgroup directory, or None with the reason there is none."""

    directory: str | None
    reason: str = ""


def detect(proc: str = "/proc", pid: int | None = None) -> Detected:
    """Whether the daemon (`pid`, default this process) has a delegated cgroup v2 subtree. Reads a few
    files: call it from a thread once the event loop runs."""
    pid = os.getpid() if pid is None else pid
    try:
        with open(f"{proc}/{pid}/cgroup") as handle:
            own = own_cgroup(handle.read())
        with open(f"{proc}/{pid}/mountinfo") as handle:
            mounts = cgroup2_mounts(handle.read())
    except OSError as err:
        return Detected(None, f"cannot read the daemon's cgroup ({err})")
    if own is None:
        return Detected(None, "cgroup v2 is not in use (cgroup v1 only)")
    directory = cgroup_directory(own, mounts)
    if directory is None or not os.path.isdir(directory):
        return Detected(None, f"the cgroup v2 hierarchy holding {own} is not mounted here")
    return check_delegated(directory, pid)


def check_delegated(directory: str, pid: int) -> Detected:
    """`directory` is the daemon's cgroup: is it delegated to it (writable, and its alone)?"""
    for name in ("", "cgroup.procs", "cgroup.subtree_control"):
        if not os.access(os.path.join(directory, name), os.W_OK):
            return Detected(None, f"{directory} is not delegated to swarmd (not writable; systemd: Delegate=yes)")
    others = [other for other in cgroup_pids(directory) if other != pid]
    if others:
        return Detected(None, f"{directory} is not swarmd's alone ({len(others)} other processes live in it)")
    return Detected(directory)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read_text(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


class Subtree:
    """The daemon's delegated cgroup: its `supervisor/` leaf and one cgroup per backend start."""

    def __init__(self, directory: str, pid: int | None = None) -> None:
        self.directory = directory
        self.pid = os.getpid() if pid is None else pid
        self.leaf = os.path.join(directory, SUPERVISOR)
        self.controllers: frozenset[str] = frozenset()
        self.notes: list[str] = []  # what set-up could not do, for the log

    def setup(self) -> None:
        """Move the daemon into `supervisor/`, clear stale starts, enable the controllers. Raises OSError
        when the daemon cannot be moved (the subtree is then unusable)."""
        os.makedirs(self.leaf, exist_ok=True)
        _write(os.path.join(self.leaf, "cgroup.procs"), str(self.pid))
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if name.startswith(START_PREFIX) and os.path.isdir(path):
                kill_cgroup(path)
                if remove_cgroup(path, patience=1.0):
                    self.notes.append(f"removed the stale cgroup {name}")
                else:
                    self.notes.append(f"cannot remove the stale cgroup {name}")
        offered = set(_read_text(os.path.join(self.directory, "cgroup.controllers")).split())
        for controller in WANTED:
            if controller not in offered:
                self.notes.append(f"the {controller} controller is not delegated")
                continue
            try:
                _write(os.path.join(self.directory, "cgroup.subtree_control"), f"+{controller}")
            except OSError as err:
                self.notes.append(f"cannot enable the {controller} controller: {os.strerror(err.errno or 0)}")
        enabled = set(_read_text(os.path.join(self.directory, "cgroup.subtree_control")).split())
        self.controllers = frozenset(enabled & set(WANTED))

    def create(self, name: str, memory_max: str = "", cpu_weight: int = 0) -> tuple[str, list[str]]:
        """Make the cgroup of one start with its limits. Returns its path and the limits that could not be
        applied (as messages). Raises OSError when the directory cannot be made."""
        path = os.path.join(self.directory, name)
        os.mkdir(path)
        problems = []
        for setting, controller, filename, value in (("memory_max", "memory", "memory.max", memory_max),
                                                     ("cpu_weight", "cpu", "cpu.weight", cpu_weight)):
            if not value:
                continue
            if controller not in self.controllers:
                problems.append(f"{setting} is not applied: the {controller} controller is not delegated")
                continue
            try:
                _write(os.path.join(path, filename), str(value))
            except OSError as err:
                problems.append(f"{setting}={value} is not applied: {os.strerror(err.errno or 0)}")
        return path, problems

    def place(self, path: str, pid: int) -> None:
        """Move process `pid` (a leader, just spawned) into the cgroup `path`, with the members of its
        process group that are still in `supervisor/` (what it forked before the move). Raises OSError."""
        _write(os.path.join(path, "cgroup.procs"), str(pid))
        for stray in cgroup_pids(self.leaf):
            if stray == self.pid:
                continue
            try:
                with open(f"/proc/{stray}/stat", "rb") as handle:
                    info = parse_stat(handle.read())
                if info is not None and info.pgrp == pid:
                    _write(os.path.join(path, "cgroup.procs"), str(stray))
            except OSError:
                continue

    @staticmethod
    def kill(path: str) -> None:
        kill_cgroup(path)

    @staticmethod
    def remove(path: str) -> bool:
        """rmdir the cgroup of a start; False while something still lives in it."""
        return remove_cgroup(path)
