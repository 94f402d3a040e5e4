"""swarmd.cgroups -- detection of a delegated cgroup v2 subtree, the daemon's `supervisor/` leaf, one cgroup
per start -- on fake trees in a tmp dir, and on the real kernel where this machine lets a test make a
delegated cgroup (root and a writable cgroup2 mount). Also the attribution a sweep does where no cgroup
is delegated (supervise/guardian.py's core, supervise/process.py's `_attribute`), on made-up process
tables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarmd import cgroups
from swarmd.supervise import guardian as core
from swarmd.supervise import process
from tests.helpers import alive, wait_until

# -- parsing ----------------------------------------------------------------------------------------------------

HYBRID_CGROUP = """\
9:name=systemd:/
4:memory:/process_api/abc
0::/
"""
UNIFIED_CGROUP = "0::/system.slice/swarmd.service\n"
V1_CGROUP = "4:memory:/user.slice\n1:name=systemd:/user.slice\n"

MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 /docker/abc /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw
"""


def test_own_cgroup_is_the_v2_line():
    assert cgroups.own_cgroup(HYBRID_CGROUP) == "/"
    assert cgroups.own_cgroup(UNIFIED_CGROUP) == "/system.slice/swarmd.service"
    assert cgroups.own_cgroup(V1_CGROUP) is None


def test_cgroup2_mounts_with_their_roots_and_escapes():
    assert cgroups.cgroup2_mounts(MOUNTINFO) == [("/", "/sys/fs/cgroup/unified"), ("/docker/abc", "/mnt/my cgroups")]


def test_cgroup_directory_under_the_mount_whose_root_holds_it():
    assert cgroups.cgroup_directory("/system.slice/swarmd.service", [("/", "/sys/fs/cgroup")]) == \
        "/sys/fs/cgroup/system.slice/swarmd.service"
    assert cgroups.cgroup_directory("/", [("/", "/sys/fs/cgroup/unified")]) == "/sys/fs/cgroup/unified"
    mounts = [("/docker/abc", "/mnt/c")]
    assert cgroups.cgroup_directory("/docker/abc/x", mounts) == "/mnt/c/x"
    assert cgroups.cgroup_directory("/docker/abcdef", mounts) is None
    assert cgroups.cgroup_directory("/other", mounts) is None


def test_start_names_carry_the_number_and_the_instance():
    name = cgroups.start_name(12, "a1b2c3")
    assert name == "start-12-a1b2c3"
    assert cgroups.start_number(f"/sys/fs/cgroup/x/{name}", "a1b2c3") == 12
    assert cgroups.start_number(f"/x/{name}", "ffffff") is None  # another daemon's
    assert cgroups.start_number("/x/supervisor", "a1b2c3") is None


# -- detection on a fake tree ----------------------------------------------------------------------------------


def fake_system(tmp_path: Path, own: str, pids: list[int], pid: int = 4242) -> Path:
    """A fake /proc for `pid` (its cgroup `own`, a cgroup2 mount at tmp/cgroup) and the cgroup directory."""
    proc = tmp_path / "proc" / str(pid)
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text(f"0::{own}\n")
    mount = tmp_path / "cgroup"
    (proc / "mountinfo").write_text(f"41 31 0:38 / {mount} rw,relatime - cgroup2 cgroup2 rw\n")
    directory = mount / own.strip("/")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    (directory / "cgroup.subtree_control").write_text("")
    (directory / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    return directory


def test_a_writable_cgroup_of_its_own_is_delegated(tmp_path):
    directory = fake_system(tmp_path, "/system.slice/swarmd.service", [4242])
    found = cgroups.detect(str(tmp_path / "proc"), 4242)
    assert found == cgroups.Detected(str(directory))


def test_a_cgroup_shared_with_other_processes_is_not(tmp_path):
    fake_system(tmp_path, "/user.slice/session-1.scope", [4242, 17, 18])
    found = cgroups.detect(str(tmp_path / "proc"), 4242)
    assert found.directory is None and "2 other processes" in found.reason


def test_a_cgroup_it_cannot_write_is_not(tmp_path, monkeypatch):
    fake_system(tmp_path, "/system.slice/swarmd.service", [4242])
    monkeypatch.setattr(cgroups.os, "access", lambda path, mode: False)  # (root may write anything here)
    found = cgroups.detect(str(tmp_path / "proc"), 4242)
    assert found.directory is None and "Delegate=yes" in found.reason


def test_without_cgroup_v2_or_its_mount(tmp_path):
    proc = tmp_path / "proc" / "7"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text(V1_CGROUP)
    (proc / "mountinfo").write_text("")
    assert "cgroup v1 only" in cgroups.detect(str(tmp_path / "proc"), 7).reason
    (proc / "cgroup").write_text(UNIFIED_CGROUP)
    assert "not mounted" in cgroups.detect(str(tmp_path / "proc"), 7).reason
    assert "cannot read" in cgroups.detect(str(tmp_path / "proc"), 8).reason


# -- set-up, starts, placement on a fake tree -----------------------------------------------------------------


class FakeKernel:
    """Records the writes to cgroup files, keeping subtree_control's +controller semantics."""

    def __init__(self, monkeypatch):
        self.writes: list[tuple[str, str]] = []
        real = cgroups._write

        def write(path: str, text: str) -> None:
            self.writes.append((os.path.basename(path), text))
            if path.endswith("cgroup.subtree_control"):
                current = set(Path(path).read_text().split())
                Path(path).write_text(" ".join(sorted(current | {text.lstrip("+")})))
            else:
                real(path, text) if os.path.exists(path) else Path(path).write_text(text)

        monkeypatch.setattr(cgroups, "_write", write)


def test_setup_moves_the_daemon_into_supervisor_clears_stale_starts_and_enables_controllers(tmp_path, monkeypatch):
    kernel = FakeKernel(monkeypatch)
    directory = fake_system(tmp_path, "/system.slice/swarmd.service", [4242])
    (directory / "start-3-00aa").mkdir()  # left by an earlier daemon (empty: a fake cgroup)
    (directory / "unrelated").mkdir()
    subtree = cgroups.Subtree(str(directory), pid=4242)
    subtree.setup()
    assert (directory / "supervisor" / "cgroup.procs").read_text() == "4242"
    assert not (directory / "start-3-00aa").exists() and (directory / "unrelated").exists()
    assert subtree.controllers == {"memory", "cpu"}
    assert [w for w in kernel.writes if w[0] == "cgroup.subtree_control"] == \
        [("cgroup.subtree_control", "+memory"), ("cgroup.subtree_control", "+cpu")]
    assert "removed the stale cgroup start-3-00aa" in subtree.notes


def test_setup_notes_controllers_that_are_not_offered(tmp_path, monkeypatch):
    FakeKernel(monkeypatch)
    directory = fake_system(tmp_path, "/x", [4242])
    (directory / "cgroup.controllers").write_text("pids\n")
    subtree = cgroups.Subtree(str(directory), pid=4242)
    subtree.setup()
    assert subtree.controllers == frozenset()
    assert subtree.notes == ["the memory controller is not delegated", "the cpu controller is not delegated"]


def test_a_start_gets_its_limits_or_says_which_it_cannot_apply(tmp_path, monkeypatch):
    FakeKernel(monkeypatch)
    subtree = cgroups.Subtree(str(tmp_path), pid=1)
    subtree.controllers = frozenset({"memory"})
    path, problems = subtree.create("start-1-ab", memory_max="8G", cpu_weight=50)
    assert Path(path, "memory.max").read_text() == "8G"
    assert not Path(path, "cpu.weight").exists()
    assert problems == ["cpu_weight is not applied: the cpu controller is not delegated"]
    path, problems = subtree.create("start-2-ab")
    assert os.listdir(path) == [] and problems == []
    with pytest.raises(FileExistsError):
        subtree.create("start-2-ab")


def test_place_moves_the_leader_and_the_members_of_its_group_left_in_supervisor(tmp_path, monkeypatch):
    kernel = FakeKernel(monkeypatch)
    subtree = cgroups.Subtree(str(tmp_path), pid=os.getpid())
    Path(subtree.leaf).mkdir()
    # A real leader (its own session) that forked before it could be moved, and an unrelated process.
    leader = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
                               "print(flush=True); time.sleep(30)"], start_new_session=True, stdout=subprocess.PIPE)
    other = subprocess.Popen(["sleep", "30"])
    try:
        leader.stdout.readline()
        member = next(p.pid for p in core.read_procs().values() if p.ppid == leader.pid)
        Path(subtree.leaf, "cgroup.procs").write_text(f"{os.getpid()}\n{member}\n{other.pid}\n")
        start = tmp_path / "start-1-ab"
        start.mkdir()
        subtree.place(str(start), leader.pid)
        assert [text for name, text in kernel.writes if name == "cgroup.procs"] == [str(leader.pid), str(member)]
    finally:
        for p in (leader, other):
            os.killpg(p.pid, signal.SIGKILL) if p is leader else p.kill()
            p.wait()


# -- the real kernel ----------------------------------------------------------------------------------------------


def test_this_machine_if_it_delegates_a_cgroup_to_the_tests():
    found = cgroups.detect()
    if found.directory is None:
        pytest.skip(f"this test process has no delegated cgroup: {found.reason}")
    assert os.path.isdir(found.directory)
    assert os.getpid() in core.cgroup_pids(found.directory)


def test_the_real_thing_a_daemon_in_a_delegated_cgroup(made_cgroup):
    # The "daemon": a process alone in the made cgroup.
    daemon = subprocess.Popen(["sleep", "30"])
    sleeper = None
    try:
        (made_cgroup / "cgroup.procs").write_text(str(daemon.pid))
        found = cgroups.detect(pid=daemon.pid)
        assert found.directory == str(made_cgroup), found.reason
        subtree = cgroups.Subtree(found.directory, pid=daemon.pid)
        subtree.setup()
        assert Path(f"/proc/{daemon.pid}/cgroup").read_text().strip().endswith(f"{made_cgroup.name}/supervisor")
        offered = set((made_cgroup / "cgroup.controllers").read_text().split())
        assert subtree.controllers == offered & {"memory", "cpu"}
        path, problems = subtree.create("start-1-ab", memory_max="64M", cpu_weight=50)
        if "memory" in offered:
            assert Path(path, "memory.max").read_text().strip() == str(64 << 20)
            assert not [p for p in problems if "memory_max" in p]
        else:
            assert any("memory_max is not applied" in p for p in problems)
        sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
        subtree.place(path, sleeper.pid)
        assert Path(f"/proc/{sleeper.pid}/cgroup").read_text().strip().endswith("/start-1-ab")
        assert core.cgroup_pids(path) == [sleeper.pid]
        assert not subtree.remove(path)  # something lives in it
        subtree.kill(path)
        assert sleeper.wait(5) == -signal.SIGKILL
        assert wait_until(lambda: subtree.remove(path), timeout=5, what="the start's cgroup removed")
    finally:
        for p in (daemon, sleeper):
            if p is not None:
                p.kill()
                p.wait()


# -- attribution without cgroups -------------------------------------------------------------------------------


def P(pid: int, ppid: int, pgrp: int | None = None, sid: int | None = None, starttime: int = 100,
      zombie: bool = False) -> core.Proc:
    return core.Proc(pid, ppid, pgrp or pid, sid or pid, starttime, zombie, "x")


def test_parse_stat_with_a_hostile_command_name():
    line = b"123 (a) b) (c) S 1 123 123 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 4567 0 0\n"
    assert core.parse_stat(line) == core.Proc(123, 1, 123, 123, 4567, False, "a) b) (c")
    assert core.parse_stat(line.replace(b" S ", b" Z ")).zombie
    assert core.parse_stat(b"garbage") is None


def test_the_token_is_found_anywhere_in_the_environment():
    assert core.token_in(b"SWARMD_START=ab.3\0HOME=/\0") == "ab.3"
    assert core.token_in(b"A=1\0SWARMD_START=ab.4\0") == "ab.4"
    assert core.token_in(b"A=1\0SWARMD_START=ab.5") == "ab.5"
    assert core.token_in(b"A=1\0XSWARMD_START=ab.6\0") is None
    assert core.token_in(b"") is None


def test_propagation_follows_children_sessions_and_groups_but_not_the_barrier():
    procs = {p.pid: p for p in [
        P(1, 0), P(10, 1),                       # init, the daemon (its own session)
        P(20, 10),                               # a leader: session and group 20
        P(21, 20, 20, 20), P(22, 10, 22, 22),    # its group member; an escaped orphan (own session)
        P(23, 22, 22, 22),                       # the escapee's child: the same session
        P(24, 10, 24, 24), P(25, 24, 24, 24),    # someone else's escapee and child
        P(30, 10, 10, 10),                       # something in the daemon's own session
    ]}
    labels = core.propagate(procs, {20: "a", 23: "a"}, barrier={10})
    assert labels == {20: "a", 21: "a", 22: "a", 23: "a"}
    assert core.propagate(procs, {10: "x"}, barrier={10}) == {}
    assert core.propagate(procs, {30: "x"}, barrier={10}) == {30: "x"}  # not spread through the daemon's


def view(**overrides) -> process._View:
    base = dict(daemon=10, guardian=11, instance="ab", subreaper=True, cgroups=False,
                starts={1: (50, 20, False), 2: (500, 40, True)}, leaders={20: 1}, newest=3, now=900,
                signals=(), rmdirs=())
    return process._View(**{**base, **overrides})


def test_attribution_by_leader_group_token_and_orphanhood(monkeypatch):
    tokens = {22: "ab.1", 41: "ab.2", 60: "zz.1", 70: "ab.3", 71: "ab.9"}
    monkeypatch.setattr(core, "read_token", lambda pid, proc="/proc": tokens.get(pid))
    procs = {p.pid: p for p in [
        P(11, 10),                                   # the guardian
        P(20, 10), P(21, 20, 20, 20),                # start 1's leader and group member
        P(22, 10, 22, 22), P(23, 22, 22, 22),        # start 1's escapee (token) and its child (env cleared)
        P(41, 10, 41, 41),                           # start 2 (ending)'s escapee
        P(60, 10, 60, 60),                           # another daemon's token: an orphan here
        P(70, 10, 70, 70), P(71, 10, 71, 71),        # start 3 (over) and start 9 (begun after the view)
        P(80, 10, 80, 80, starttime=40),             # an orphan older than every running start
    ]}
    labels = process._attribute(procs, view())
    assert labels[20] == labels[21] == labels[22] == labels[23] == 1
    assert labels[41] == 2 and labels[70] == 3 and labels[71] == 9
    assert labels[60] == ("orphan", 60) and labels[80] == ("orphan", 80)
    assert 11 not in labels


def test_a_sweep_kills_what_is_over_and_spares_what_may_be_running(monkeypatch):
    """Which processes a sweep decides to kill, on a made-up table (nothing is signalled for real)."""
    tokens = {41: "ab.2", 70: "ab.3", 71: "ab.9"}
    table = {p.pid: p for p in [
        P(10, 1), P(11, 10), P(20, 10), P(22, 10, 22, 22), P(41, 10, 41, 41), P(70, 10, 70, 70),
        P(71, 10, 71, 71),
        P(80, 10, 80, 80, starttime=40),      # older than start 1 (born 50): no running start owns it
        P(81, 10, 81, 81, starttime=60),      # younger than start 1: start 1 may own it
        P(82, 10, 82, 82, starttime=40, zombie=True),
    ]}
    killed: list[int] = []
    monkeypatch.setattr(core, "read_token", lambda pid, proc="/proc": tokens.get(pid))
    monkeypatch.setattr(core, "read_procs", lambda proc="/proc", read=None: {pid: p for pid, p in table.items()
                                                                  if pid not in killed})
    monkeypatch.setattr(core, "kill", lambda p, signum=signal.SIGKILL, proc="/proc": killed.append(p.pid) or True)
    swept = process._sweep(view())
    assert sorted(killed) == [41, 70, 80]
    assert {p.pid: label for p, label in swept.killed} == {41: 2, 70: 3, 80: ("orphan", 80)}
    assert swept.zombies == [82]


def test_a_subreaper_less_sweep_finds_escapes_by_token_among_all_processes(monkeypatch):
    tokens = {500: "ab.2"}
    table = {p.pid: p for p in [P(10, 1), P(500, 1, 500, 500), P(501, 500, 500, 500), P(600, 1)]}
    killed: list[int] = []
    monkeypatch.setattr(core, "read_token", lambda pid, proc="/proc": tokens.get(pid))
    monkeypatch.setattr(core, "read_procs", lambda proc="/proc", read=None: {pid: p for pid, p in table.items()
                                                                  if pid not in killed})
    monkeypatch.setattr(core, "kill", lambda p, signum=signal.SIGKILL, proc="/proc": killed.append(p.pid) or True)
    process._sweep(view(subreaper=False))
    assert sorted(killed) == [500, 501]  # init's orphans, but marked; 600 is not ours


def test_kill_checks_the_start_time_so_a_reused_pid_is_never_hit():
    child = subprocess.Popen(["sleep", "30"])
    try:
        me = core.read_procs()[child.pid]
        assert not core.kill(core.Proc(me.pid, me.ppid, me.pgrp, me.sid, me.starttime + 1, me.zombie, me.comm))
        time.sleep(0.05)
        assert alive(child.pid)
        assert core.kill(me)
        assert child.wait(5) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()


def test_the_guardian_kills_groups_tokens_and_the_subreapers_children(monkeypatch):
    daemon = P(10, 1, 5, 5)  # in the session of the shell that started it
    table = {p.pid: p for p in [
        P(1, 0), P(5, 1), P(6, 5, 5, 5),     # init, that shell, another process of its session
        P(11, 10),                           # the guardian (this process, below)
        P(20, 10), P(21, 20, 20, 20),        # a listed start's leader and group member
        P(30, 1, 30, 30), P(31, 30, 30, 30), # an escapee with a token (now init's), its child
        P(40, 10, 40, 40),                   # an orphan of the daemon without token
        P(50, 1, 50, 50),                    # a stranger with another daemon's token
    ]}
    tokens = {30: "ab.7", 50: "zz.1"}
    killed: list[int] = []
    killed_groups: list[int] = []
    monkeypatch.setattr(core, "read_procs", lambda proc="/proc", read=None: {pid: p for pid, p in table.items()
                                                                  if pid not in killed})
    monkeypatch.setattr(core, "read_token", lambda pid, proc="/proc": tokens.get(pid))
    monkeypatch.setattr(core, "kill", lambda p, signum=signal.SIGKILL, proc="/proc": killed.append(p.pid) or True)
    monkeypatch.setattr(core.os, "getpid", lambda: 11)
    monkeypatch.setattr(core.os, "killpg", lambda pgid, signum: killed_groups.append(pgid))
    monkeypatch.setattr(core, "_still_ours", lambda pgid, window, proc="/proc": True)
    core.kill_everything("ab", [(20, (100, 101), "ab.1", "")], daemon)
    assert killed_groups == [20]
    assert sorted(killed) == [20, 21, 30, 31, 40]
    killed.clear()
    killed_groups.clear()
    # Group 20's number is a stranger's now (its leader's pid, another start time): left alone.
    monkeypatch.setattr(core, "_still_ours", lambda pgid, window, proc="/proc": False)
    core.kill_everything("ab", [(20, (555, 556), "ab.1", "")], None)
    assert killed_groups == [] and sorted(killed) == [30, 31]
    killed.clear()
    core.kill_everything("ab", [], None)  # not a subreaper: the daemon's children are not its business
    assert sorted(killed) == [30, 31]
    killed.clear()
    table[10] = P(10, 1, 10, 10, starttime=999)  # the daemon's pid is someone else's already
    core.kill_everything("ab", [], daemon)
    assert sorted(killed) == [30, 31]
    killed.clear()
    core.kill_everything("ab", [], P(1, 0))  # never PID 1's children
    assert sorted(killed) == [30, 31]


def test_what_the_daemon_writes_is_what_the_guardian_reads():
    containment = process.Containment(subreaper=True)
    guardian = process.Guardian(containment)  # (not started: only its registry)
    try:
        start = process.Start(7, f"{containment.instance}.7", 100, cgroup="/sys/fs/cgroup/a b/start-7-x",
                              pid=4321, forked=102)
        guardian.register(4321, start)
        guardian.register(4400, process.Start(8, f"{containment.instance}.8", 100, pid=4400, forked=101))
        guardian.register(4500)
        guardian.unregister(4400)
        os.pwrite(guardian._registry.fd, b"+garbage\n", guardian._registry.end * core.SLOT)
        me = containment.me
        orders = core.read_orders(guardian._registry.fd)
        assert orders.instance == containment.instance
        assert orders.daemon.pid == os.getpid() and orders.daemon.starttime == me.starttime
        assert sorted(orders.starts) == [
            (4321, (100, 102), f"{containment.instance}.7", "/sys/fs/cgroup/a b/start-7-x"), (4500, (0, 0), "", "")]
    finally:
        guardian.close()
