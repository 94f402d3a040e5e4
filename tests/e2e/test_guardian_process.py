"""The guardian process for real (supervise/process.py's `Guardian`): a /bin/sh waits out the daemon's life
on a pipe, and when the pipe closes -- the daemon's end -- the Python guardian it becomes kills every start
registered in the memfd, and every process carrying one of the instance's tokens. Without /bin/sh, Python
waits itself and does the same. The "daemon" here is this test process: closing the pipe's write end is what
its death does (tests/e2e/test_escapes.py SIGKILLs real daemons)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from swarmd.supervise import process
from tests.helpers import wait_until


def exe(pid: int) -> str:
    return os.path.realpath(os.readlink(f"/proc/{pid}/exe"))


@pytest.fixture
def spawned():
    """`spawn(env=None)`: a `sleep 600` in a session of its own, killed after the test if still alive."""
    made: list[subprocess.Popen] = []

    def spawn(env: dict[str, str] | None = None) -> subprocess.Popen:
        child = subprocess.Popen(["sleep", "600"], start_new_session=True, env=env)
        made.append(child)
        return child

    yield spawn
    for child in made:
        if child.poll() is None:
            child.kill()
        child.wait()


@contextlib.contextmanager
def a_guardian() -> Iterator[process.Guardian]:
    """A started daemon-side Guardian, closed after the test (a clean shutdown: it then kills what is left)."""
    guardian = process.Guardian()
    guardian.start()
    try:
        yield guardian
    finally:
        guardian.close()


def start_of(guardian: process.Guardian, number: int, spawn) -> subprocess.Popen:
    """A start as the daemon makes one: its window's beginning before the fork, `started` after."""
    start = process.Start(number, f"{guardian.containment.instance}.{number}", process.boot_ticks())
    leader = spawn()
    guardian.containment.started(start, leader.pid)  # registers it
    return leader


POLITE = sum(1 << (signum - 1) for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT))


def ignored(pid: int) -> int:
    """The mask of the signals process `pid` ignores."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1], 16) for line in status if line.startswith("SigIgn:"))


def the_daemon_dies(guardian: process.Guardian) -> None:
    """What the daemon's death does to the guardian: the write end of its pipe closes."""
    assert guardian._proc is not None and guardian._proc.stdin is not None
    guardian._proc.stdin.close()


def killed(child: subprocess.Popen) -> None:
    assert child.wait(timeout=15) == -signal.SIGKILL


def test_a_shell_waits_and_the_guardian_it_becomes_kills_what_is_registered(spawned):
    with a_guardian() as guardian:
        pid = guardian.pid
        assert exe(pid) == os.path.realpath(process.GUARDIAN_SHELL)
        leader = start_of(guardian, 1, spawned)
        escaped = spawned({**os.environ, process.TOKEN_VAR: f"{guardian.containment.instance}.1"})  # not listed
        stranger = spawned()  # neither listed nor marked
        # The polite signals are ignored (and stay so across the exec): only the pipe's end moves it.
        wait_until(lambda: ignored(pid) & POLITE == POLITE, timeout=5, what="the signals ignored")
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
            os.kill(pid, signum)
        time.sleep(0.3)
        assert exe(pid) == os.path.realpath(process.GUARDIAN_SHELL)  # still waiting: the daemon lives
        assert leader.poll() is None and escaped.poll() is None
        the_daemon_dies(guardian)
        killed(leader)
        killed(escaped)
        assert guardian._proc.wait(timeout=15) == 0 and guardian._proc.pid == pid  # (the same process)
        assert stranger.poll() is None


def test_an_unregistered_start_is_left_alone(spawned):
    with a_guardian() as guardian:
        leader = start_of(guardian, 1, spawned)
        guardian.unregister(leader.pid)
        the_daemon_dies(guardian)
        assert guardian._proc.wait(timeout=15) == 0
        assert leader.poll() is None


def test_without_a_shell_python_waits_and_does_the_same(spawned, monkeypatch):
    monkeypatch.setattr(process, "GUARDIAN_SHELL", "/nonexistent/sh")
    with a_guardian() as guardian:
        assert exe(guardian.pid) == os.path.realpath(sys.executable)
        leader = start_of(guardian, 1, spawned)
        time.sleep(0.2)
        assert leader.poll() is None
        the_daemon_dies(guardian)
        killed(leader)
        assert guardian._proc.wait(timeout=15) == 0


def test_a_killed_guardian_is_replaced_at_the_next_register_and_knows_every_start(spawned):
    with a_guardian() as guardian:
        first = start_of(guardian, 1, spawned)
        old = guardian.pid
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: open(f"/proc/{old}/stat").read().split(") ")[1][0] == "Z", timeout=5,
                   what="the guardian dead")
        second = start_of(guardian, 2, spawned)  # finds it dead: a new one, with the same registry
        assert guardian.pid != old and exe(guardian.pid) == os.path.realpath(process.GUARDIAN_SHELL)
        the_daemon_dies(guardian)
        killed(first)
        killed(second)
