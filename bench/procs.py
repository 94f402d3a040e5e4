"""Process helpers: precise waits for exits (pidfd), CPU time in ns, RSS, and cleanup by run directory."""

from __future__ import annotations

import os
import select
import signal
import time
from pathlib import Path

import psutil


def wait_gone(pids: list[int], timeout: float) -> float | None:
    """Wait until every pid has exited (pidfd: no polling, works for non-children).

    Returns the wall-clock time (time.time()) when the last one was seen gone, or None on timeout.
    """
    poller = select.poll()
    fds: dict[int, int] = {}
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        fds[fd] = pid
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    try:
        while fds:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            for fd, _event in poller.poll(left * 1000):
                poller.unregister(fd)
                os.close(fd)
                del fds[fd]
        return time.time()
    finally:
        for fd in fds:
            os.close(fd)


def cpu_ns(pids: list[int]) -> int:
    """CPU time used so far by these processes, all their threads, in ns (/proc/PID/task/*/schedstat)."""
    total = 0
    for pid in pids:
        try:
            for task in os.scandir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task.name}/schedstat") as handle:
                    total += int(handle.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def rss_bytes(pids: list[int]) -> int:
    """Resident set size of these processes added up."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def pss_bytes(pids: list[int]) -> int:
    """Proportional set size of these processes added up (/proc/PID/smaps_rollup): shared pages count
    once across everything sharing them, unlike RSS."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def helpers(daemon: int, child_marker: str) -> list[int]:
    """The daemon and its descendants that are not benchmark children (e.g. swarmd's guardian): a child is
    a process with `child_marker` (the child script's path) anywhere in its command line -- its argv[0]
    (child.sh), or its argv[1] (a Python child script run by the interpreter)."""
    try:
        root = psutil.Process(daemon)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    pids = []
    for proc in tree:
        try:
            argv = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if child_marker not in argv:
            pids.append(proc.pid)
    return pids


def kill_run(daemon: int | None, run_dir: Path) -> int:
    """SIGKILL the daemon, its process group and tree, then every process whose command line names
    `run_dir` (scanned until none is left, so a child forked during the kill is caught). Returns a count."""
    killed = 0
    if daemon is not None:
        try:
            root = psutil.Process(daemon)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        killed += _kill(tree[:1])  # the daemon first, so that nothing restarts what is killed next
        try:
            os.killpg(daemon, signal.SIGKILL)  # started with its own session: its group is ours
        except (ProcessLookupError, PermissionError):
            pass
        killed += _kill(tree[1:])
    marker = str(run_dir)
    for _ in range(5):
        found = [proc for proc in psutil.process_iter(["cmdline"])
                 if proc.pid != os.getpid() and any(marker in part for part in proc.info["cmdline"] or [])]
        if not found:
            break
        killed += _kill(found)
    return killed


def _kill(victims: list[psutil.Process]) -> int:
    """SIGKILL these processes (psutil checks each is still the same process) and wait for them."""
    for proc in victims:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(victims, timeout=5)
    return len(victims)
