"""What a sweep reads (supervise/process.py's `_sweep`, `_look`; supervise/guardian.py's `read_tree`): as the
backends' subreaper, only the daemon's descendants that can hold an ended start's processes -- never the rest
of the machine, nor the trees of running leaders -- and, without children lists, every process, still finding
the escapes. Real processes: a stand-in daemon (a subreaper with two starts, one over) and unrelated sleepers
started by the test; the reads are counted through the readers the sweep is given."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio

from swarmd.supervise import guardian as core
from swarmd.supervise import process
from tests.helpers import alive, pids_with_arg, wait_until

#: A leader: `-c LEADER <name> stay|exit`. It starts a member of its group (`<name>-member`), a child in a
#: session of its own (`<name>-session`) and, by a double fork, an orphan in another (`<name>-escapee`); prints
#: "ready"; then stays, or exits (its start is over: what it started is the subreaper's orphans now).
LEADER = textwrap.dedent("""\
    import os, subprocess, sys, time
    me, mode = sys.argv[1], sys.argv[2]
    def sleeper(tag, **options):
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", f"{me}-{tag}"], **options)
    sleeper("member")
    sleeper("session", start_new_session=True)
    child = os.fork()
    if child == 0:
        os.setsid()
        sleeper("escapee")
        os._exit(0)
    os.waitpid(child, 0)
    print("ready", flush=True)
    if mode == "stay":
        time.sleep(600)
""")

#: The stand-in daemon: `tree.py <marker> <instance>`. The child subreaper of start 1 (its leader exits: over)
#: and start 2 (running), each marked with its token; prints both leaders' pids, then reaps what dies.
DAEMON = textwrap.dedent("""\
    import ctypes, os, subprocess, sys, time
    if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        sys.exit("cannot become a child subreaper")
    marker, instance, leader = sys.argv[1], sys.argv[2], sys.argv[3]
    leaders = [subprocess.Popen([sys.executable, "-c", open(leader).read(), f"{marker}-L{n}", mode],
                                env={**os.environ, "SWARMD_START": f"{instance}.{n}"}, start_new_session=True,
                                stdout=subprocess.PIPE) for n, mode in ((1, "exit"), (2, "stay"))]
    for p in leaders:
        p.stdout.readline()
    leaders[0].wait()
    print(leaders[0].pid, leaders[1].pid, flush=True)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.05)
""")

#: Every process of the stand-in daemon's starts, by its argv tag.
TAGS = ("L2", *(f"L{n}-{what}" for n in (1, 2) for what in ("member", "session", "escapee")))


@dataclass
class Tree:
    daemon: subprocess.Popen[bytes]
    marker: str
    instance: str
    born: int  # boot ticks before either start began
    leaders: tuple[int, int]  # start 1's (gone) and start 2's
    unrelated: list[subprocess.Popen[bytes]]
    pids: dict[str, int]  # the processes of the starts by tag, as they were made

    def pid(self, tag: str) -> int:
        return self.pids[tag]

    @property
    def over(self) -> set[int]:
        """What is left of start 1."""
        return {self.pids[f"L1-{what}"] for what in ("member", "session", "escapee")}

    def view(self, **overrides) -> process._View:
        base = dict(daemon=self.daemon.pid, guardian=None, instance=self.instance, subreaper=True, cgroups=False,
                    starts={1: (self.born, self.leaders[0], True), 2: (self.born, self.leaders[1], False)},
                    leaders={self.leaders[1]: 2}, newest=2, now=process.boot_ticks(), signals=(), rmdirs=(),
                    children=True)
        return process._View(**{**base, **overrides})


@pytest.fixture
def tree(tmp_path) -> Iterator[Tree]:
    marker = f"swarmd-sweep-{secrets.token_hex(4)}"
    unrelated = [subprocess.Popen(["sleep", "600"]) for _ in range(20)]
    (tmp_path / "daemon.py").write_text(DAEMON)
    (tmp_path / "leader.py").write_text(LEADER)
    instance = secrets.token_hex(6)
    born = process.boot_ticks()
    daemon = subprocess.Popen([sys.executable, str(tmp_path / "daemon.py"), marker, instance,
                               str(tmp_path / "leader.py")], stdout=subprocess.PIPE)
    try:
        first, second = (int(word) for word in daemon.stdout.readline().split())
        pids = {tag: pids_with_arg(f"{marker}-{tag}") for tag in TAGS}
        assert all(len(found) == 1 for found in pids.values()), pids
        yield Tree(daemon, marker, instance, born, (first, second), unrelated,
                   {tag: found[0] for tag, found in pids.items()})
    finally:
        # Only what this test started: its children by their Popen, the rest by an argv of its own.
        for tag in TAGS:
            for pid in pids_with_arg(f"{marker}-{tag}"):
                os.kill(pid, signal.SIGKILL)
        for child in (daemon, *unrelated):
            child.kill()
            child.wait()


def counting(reader: process.Reader, paths: list[str]) -> process.Reader:
    """`reader`, noting each path it is asked for."""
    def read(path: str, limit: int = 4096) -> bytes | None:
        paths.append(path)
        return reader(path, limit)

    return read


def pids_read(paths: list[str]) -> set[int]:
    return {int(path.split("/")[2]) for path in paths}


needs_children_lists = pytest.mark.skipif(not process._children_listed(),
                                          reason="this kernel has no /proc/PID/task/TID/children")


@needs_children_lists
def test_a_sweep_reads_only_the_daemons_orphans_and_kills_only_what_is_over(tree):
    stats: list[str] = []
    lists: list[str] = []
    swept = process._sweep(tree.view(), read=counting(process._read_stat, stats),
                           read_list=counting(core._read, lists))
    over = tree.over
    escapee = tree.pid("L2-escapee")
    running = {tree.leaders[1], tree.pid("L2-member"), tree.pid("L2-session")}
    strangers = {p.pid for p in tree.unrelated}

    assert {p.pid: label for p, label in swept.killed} == dict.fromkeys(over, 1)
    wait_until(lambda: not any(alive(pid) for pid in over), timeout=5, what="start 1's processes dead")
    assert all(alive(pid) for pid in running | strangers | {escapee})
    read = pids_read(stats) | pids_read(lists)
    # The stat files and children lists of the daemon and its orphans, and of nothing else: not of the
    # machine's other processes, nor of the running leader's tree (its escape, an orphan, is looked at).
    assert not read & strangers
    assert not read & running
    assert escapee in read and over <= read
    assert read <= {tree.daemon.pid, escapee} | over
    assert pids_read(lists) <= {tree.daemon.pid, escapee} | over


@needs_children_lists
def test_a_signal_for_a_running_start_reads_its_leaders_tree_and_reaches_its_escapes(tree):
    stats: list[str] = []
    swept = process._sweep(tree.view(starts={n: (tree.born, pid, False) for n, pid in enumerate(tree.leaders, 1)},
                                     signals=((2, signal.SIGTERM, tree.leaders[1]),)),
                           read=counting(process._read_stat, stats))
    escaped = {tree.pid("L2-session"), tree.pid("L2-escapee")}
    assert swept.killed == []
    wait_until(lambda: not any(alive(pid) for pid in escaped), timeout=5, what="start 2's escapes signalled")
    # Its group has the signal from the group's own kill, not from the sweep.
    assert alive(tree.leaders[1]) and alive(tree.pid("L2-member"))
    read = pids_read(stats)
    assert {tree.leaders[1], tree.pid("L2-member")} | escaped <= read
    assert not read & {p.pid for p in tree.unrelated}


def test_without_children_lists_a_sweep_reads_every_process_and_still_finds_the_escapes(tree):
    stats: list[str] = []
    lists: list[str] = []
    swept = process._sweep(tree.view(children=False), read=counting(process._read_stat, stats),
                           read_list=counting(core._read, lists))
    over = tree.over
    assert {p.pid: label for p, label in swept.killed} == dict.fromkeys(over, 1)
    wait_until(lambda: not any(alive(pid) for pid in over), timeout=5, what="start 1's processes dead")
    strangers = {p.pid for p in tree.unrelated}
    assert all(alive(pid) for pid in strangers | {tree.leaders[1], tree.pid("L2-escapee")})
    assert strangers <= pids_read(stats)  # the whole machine was read: this was the fallback
    assert lists == []


@needs_children_lists
def test_read_tree_leaves_out_the_skipped_subtrees_and_reads_nothing_else(tree):
    stats: list[str] = []
    found = core.read_tree(tree.daemon.pid, {tree.leaders[1]}, read=counting(process._read_stat, stats))
    orphans = tree.over | {tree.pid("L2-escapee")}
    assert found is not None and set(found) == orphans
    assert pids_read(stats) == orphans
    everything = core.read_tree(tree.daemon.pid)
    assert everything is not None
    assert set(everything) == orphans | {tree.leaders[1], tree.pid("L2-member"), tree.pid("L2-session")}
    assert core.read_tree(tree.daemon.pid, set(everything)) == {}


async def test_a_burst_of_sweep_requests_is_served_by_one_sweep_more(monkeypatch):
    """However many requests come while a sweep runs, one more sweep serves them all (`Containment._drive`):
    a burst of restarts never queues a sweep per restart."""
    views: list[process._View] = []
    running, release = threading.Event(), threading.Event()

    def sweep(view: process._View, read: object = None, read_list: object = None) -> process._Swept:
        views.append(view)
        running.set()
        release.wait(10)
        return process._Swept([], [], [])

    monkeypatch.setattr(process, "_sweep", sweep)
    containment = process.Containment()
    first = [containment._request() for _ in range(50)]
    assert len({id(event) for event in first}) == 1  # all served by the coming sweep
    await trio.to_thread.run_sync(running.wait, 10)
    more = [containment._request() for _ in range(50)]  # while it runs
    release.set()
    with trio.fail_after(10):
        await first[0].wait()
        await more[-1].wait()
    assert len({id(event) for event in more}) == 1
    assert len(views) == 2
