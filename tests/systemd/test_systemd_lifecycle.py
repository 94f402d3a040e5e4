"""The daemon as systemd runs it: a real `swarmd serve` subprocess, real signals, real children.

The notification socket is faked by a datagram socket the test binds (tests/systemd/notify_listener.py);
socket activation is done by systemd's own `systemd-socket-activate`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarmd.supervise.process import GUARDIAN_SCRIPT
from tests.helpers import Api, alive, backend_yaml, pids_with_arg, wait_until
from tests.systemd.notify_listener import NotifyListener
from tests.systemd.tools import systemd_tool

ROOT = Path(__file__).resolve().parents[2]
PRIVATE = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

#: A backend that records its pid, environment and open file descriptors, then sleeps.
CHILD = """\
import json, os, sys, time
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as handle:
    json.dump({"pid": os.getpid(), "env": dict(os.environ), "fds": fds}, handle)
os.replace(tmp, sys.argv[1])
time.sleep(600)
"""


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def sig_ignored(pid: int, signum: int) -> bool:
    with open(f"/proc/{pid}/status") as handle:
        mask = int(next(line for line in handle if line.startswith("SigIgn:")).split()[1], 16)
    return bool(mask & (1 << (signum - 1)))


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_under_socket_activation_with_notify_and_watchdog(tmp_path, procs):
    activate = systemd_tool("systemd-socket-activate")
    marker = f"swarmd-sd-{os.getpid()}"
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    records = [tmp_path / "record-0.json", tmp_path / "record-1.json"]
    backends = {i: {"settings": {"command": f"{sys.executable} {child} {records[i]} {marker}",
                                 "restart_delay": 1.0}} for i in range(2)}
    (tmp_path / "backends.yaml").write_text(backend_yaml(backends))
    config = tmp_path / "swarmd.yaml"
    config.write_text("backends: backends.yaml\nlog_level: debug\n")
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    api_socket = tmp_path / "api.sock"
    passed = [f"-E{name}" for name in ("PATH", "PYTHONPATH", "VIRTUAL_ENV") if name in os.environ]
    log = open(tmp_path / "swarmd.log", "wb")
    # systemd-socket-activate binds the socket, waits for the first connection, then execs swarmd in its
    # own process (LISTEN_PID is that pid) with only the variables named by -E.
    proc = subprocess.Popen(
        [activate, "-l", str(api_socket), f"-ENOTIFY_SOCKET={listener.address}", "-EWATCHDOG_USEC=200000",
         *passed, sys.executable, "-m", "swarmd", "serve", "--config", str(config)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    procs.append(proc)
    try:
        wait_until(api_socket.exists, what="systemd-socket-activate's socket")
        # The first connection starts swarmd; it waits in the backlog until swarmd serves the fd.
        client = Api(api_socket)
        status = client.ok("GetDaemonStatus")
        assert status["socket_activated"] is True, status
        assert status["config_file"] == str(config)

        # READY=1 once the socket listens and both backends have been started.
        ready = listener.wait_for(lambda f: f.get("READY") == "1", what="READY=1")
        ready_status = listener.snapshot()[ready][1]["STATUS"]
        assert re.fullmatch(r"2 (running|loading)|1 running, 1 loading", ready_status), ready_status
        assert all(listener.snapshot()[i][1].keys() == {"WATCHDOG"} for i in range(ready)), \
            "nothing but watchdog pings before READY=1"
        wait_until(lambda: all(r.exists() for r in records), what="both backends recorded")
        first_pids = [json.loads(r.read_text())["pid"] for r in records]
        assert sorted(pids_with_arg(marker)) == sorted(first_pids)
        listener.wait_for(lambda f: f.get("STATUS") == "2 running", what="STATUS=2 running")

        # The backends see none of systemd's variables and none of its fds.
        for record in records:
            seen = json.loads(record.read_text())
            assert not set(PRIVATE) & set(seen["env"]), seen["env"]
            assert not [link for link in seen["fds"].values() if link.startswith("socket:")], seen["fds"]

        # A backend dies and comes back: STATUS follows it, changing only when the text changes.
        mark = len(listener.snapshot())
        os.kill(first_pids[0], signal.SIGKILL)
        died = listener.wait_for(lambda f: f.get("STATUS") == "1 running, 1 waiting", start=mark,
                                 what="STATUS after the SIGKILL")
        listener.wait_for(lambda f: f.get("STATUS") == "2 running", start=died + 1, what="STATUS back to 2 running")
        wait_until(lambda: json.loads(records[0].read_text())["pid"] != first_pids[0], what="backend 0 restarted")
        statuses = listener.values("STATUS")
        assert all(a != b for a, b in zip(statuses, statuses[1:], strict=False)), statuses

        # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
        mark = len(listener.snapshot())
        proc.send_signal(signal.SIGHUP)
        reloading = listener.wait_for(lambda f: f.get("RELOADING") == "1", start=mark, what="RELOADING=1")
        assert int(listener.snapshot()[reloading][1]["MONOTONIC_USEC"]) > 0
        listener.wait_for(lambda f: f.get("READY") == "1", start=reloading + 1, what="READY=1 after reload")

        # WATCHDOG=1 keeps arriving at half of WATCHDOG_USEC (0.1 s).
        pings_before = len(listener.values("WATCHDOG"))
        time.sleep(1.0)
        pings = len(listener.values("WATCHDOG")) - pings_before
        assert 5 <= pings <= 15, pings

        # The API still answers on the activated socket.
        assert client.ok("GetDaemonStatus")["counts"] == {"running": 2}

        # SIGTERM: STOPPING=1, every backend stopped, exit 0, nothing left.
        guardian = [pid for pid in children_of(proc.pid)
                    if GUARDIAN_SCRIPT.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
        assert len(guardian) == 1
        mark = len(listener.snapshot())
        proc.send_signal(signal.SIGTERM)
        listener.wait_for(lambda f: f.get("STOPPING") == "1", start=mark, what="STOPPING=1")
        assert proc.wait(20) == 0
        assert pids_with_arg(marker) == []
        wait_until(lambda: not alive(guardian[0]), timeout=5, what="the guardian gone")
    except BaseException:
        print((tmp_path / "swarmd.log").read_text(errors="replace"))
        raise
    finally:
        listener.close()
        log.close()


def test_fifty_backends_that_ignore_sigterm_stop_in_parallel(start_daemon):
    marker = f"swarmd-stubborn-{os.getpid()}"
    count, stop_timeout = 50, 1.0
    # sh ignores TERM, and so does its child sleep (an ignored signal survives exec): only SIGKILL ends them.
    # The marker is the shell's $0, a whole argument of its argv (the trailing `:` keeps sh from exec'ing sleep).
    command = f"sh -c \"trap '' TERM; sleep 600; :\" {marker}"
    backends = {i: {"settings": {"command": command, "stop_timeout": stop_timeout}} for i in range(count)}
    daemon = start_daemon(backends)
    try:
        daemon.wait_log(r"ready \(pid", count=count, timeout=60)
        shells = wait_until(lambda: len(found := pids_with_arg(marker)) == count and found, what="50 shells")
        wait_until(lambda: all(sig_ignored(pid, signal.SIGTERM) and children_of(pid) for pid in shells),
                   what="every shell ignoring SIGTERM, with its sleep")
        sleeps = [child for pid in shells for child in children_of(pid)]
        assert all(sig_ignored(pid, signal.SIGTERM) for pid in sleeps)
        started = time.monotonic()
        assert daemon.stop(signal.SIGTERM, timeout=60) == 0
        elapsed = time.monotonic() - started
        # One by one this would take 50 s; in parallel it is one stop_timeout plus the daemon's own exit.
        assert stop_timeout <= elapsed < stop_timeout + 3.0, elapsed
        assert pids_with_arg(marker) == []
        assert not [pid for pid in sleeps if alive(pid)]
    finally:
        daemon.kill()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_while_stopping_kills_every_backend_at_once(start_daemon, second):
    marker = f"swarmd-second-{os.getpid()}"
    command = f"sh -c \"trap '' TERM; sleep 600; :\" {marker}"  # the marker: the shell's $0
    backends = {i: {"settings": {"command": command, "stop_timeout": 60}} for i in range(3)}
    daemon = start_daemon(backends)
    try:
        daemon.wait_log(r"ready \(pid", count=3)
        shells = wait_until(lambda: len(found := pids_with_arg(marker)) == 3 and found, what="3 shells")
        wait_until(lambda: all(sig_ignored(pid, signal.SIGTERM) for pid in shells), what="TERM ignored")
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.wait_log("stopping every backend")
        time.sleep(0.3)
        assert sorted(pids_with_arg(marker)) == sorted(shells)  # still there: they ignore SIGTERM (60 s)
        started = time.monotonic()
        assert daemon.stop(second, timeout=20) == 0
        assert time.monotonic() - started < 5
        assert pids_with_arg(marker) == []
        assert "again: killing every backend now" in daemon.log()
    finally:
        daemon.kill()


def test_logs_use_journald_priorities_when_stderr_is_the_journal_stream(tmp_path, start_daemon):
    log_path = tmp_path / "swarmd.log"
    log_path.write_bytes(b"")
    info = log_path.stat()  # Daemon opens the same file (same inode) for the daemon's stdout and stderr
    backends = {0: {"settings": {"command": f"{sys.executable} -c 'print(1)'", "restart": "never"}}}
    daemon = start_daemon(backends, env={**os.environ, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
    daemon.wait_log("swarmd ready")
    assert daemon.stop(signal.SIGTERM) == 0
    lines = [line for line in daemon.log().splitlines() if line]
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines
    assert any(line.startswith("<6>swarmd ready") for line in lines), lines


def test_logs_have_timestamps_otherwise(start_daemon):
    backends = {0: {"settings": {"command": f"{sys.executable} -c 'print(1)'", "restart": "never"}}}
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["JOURNAL_STREAM"] = "1:2"  # the journal's stream, but not our stderr (e.g. redirected to a file)
    daemon = start_daemon(backends, env=env)
    daemon.wait_log("swarmd ready")
    assert daemon.stop(signal.SIGTERM) == 0
    ready = next(line for line in daemon.log().splitlines() if "swarmd ready" in line)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} info +swarmd ready", ready), ready
