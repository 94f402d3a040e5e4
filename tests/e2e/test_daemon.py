"""`swarmd serve` as a black box: real daemon, real children, real signals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.helpers import pids_with_arg, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_sigkill_of_the_daemon_leaves_no_process_behind(start_daemon):
    marker = f"swarmd-orphan-{os.getpid()}"
    # each backend: a main process and a grandchild in its group, each with its own marker argument
    backends = {i: {"settings": {"command": (
        f"sh -c \"{sys.executable} -c 'import time; time.sleep(600)' {marker}-gc & "
        f"exec {sys.executable} -c 'import time; time.sleep(600)' {marker}-main\"")}} for i in range(5)}
    daemon = start_daemon(backends)
    daemon.wait_log(r"ready \(pid", count=5)
    wait_until(lambda: len(pids_with_arg(f"{marker}-gc")) == 5, what="5 grandchildren")
    wait_until(lambda: len(pids_with_arg(f"{marker}-main")) == 5, what="5 main processes")
    daemon.kill()

    def left() -> list[int]:
        return pids_with_arg(f"{marker}-gc") + pids_with_arg(f"{marker}-main")

    try:
        wait_until(lambda: not left(), timeout=5, what="every backend process gone")
    except AssertionError:
        cmdlines = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left()}
        raise AssertionError(f"left behind: {cmdlines}\n{daemon.log()}") from None


def test_sigterm_stops_everything_and_exits_0(start_daemon):
    marker = f"swarmd-term-{os.getpid()}"
    backends = {i: {"settings": {"command": f"{sys.executable} -c 'import time; time.sleep(600)' {marker}"}}
                for i in range(3)}
    daemon = start_daemon(backends)
    daemon.wait_log(r"ready \(pid", count=3)
    wait_until(lambda: len(pids_with_arg(marker)) == 3, what="3 backend processes")
    assert daemon.stop(signal.SIGTERM) == 0
    assert pids_with_arg(marker) == []
    assert "swarmd stopped" in daemon.log()


def test_a_child_of_a_daemon_that_ignores_sigint_still_stops_on_sigint(start_daemon):
    # The main process is `sleep`, which has no handler: only a default SIGINT disposition ends it.
    daemon = start_daemon({0: {"settings": {"command": "sleep 600", "stop_signal": "SIGINT", "stop_timeout": 30}}},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    pid = int(daemon.wait_log(r"ready \(pid (\d+)")[0])
    with open(f"/proc/{pid}/status") as handle:
        ignored = int(next(line for line in handle if line.startswith("SigIgn:")).split()[1], 16)
    assert not ignored & (1 << (signal.SIGINT - 1)), "the child inherited an ignored SIGINT"
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10  # far below stop_timeout: SIGINT itself ended it
    assert not os.path.exists(f"/proc/{pid}")


def test_the_example_file_serves_http_on_both_backends(tmp_path, start_daemon):
    shutil.copy(ROOT / "etc/swarmd/backends.yaml", tmp_path / "backends.yaml")
    daemon = start_daemon()
    ports = daemon.wait_log(r"ready \(pid \d+, port (\d+)\)", count=2)
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
            assert answer.status == 200
    assert daemon.stop(signal.SIGINT) == 0


def test_serve_refuses_an_invalid_file_with_located_errors(tmp_path):
    path = tmp_path / "backends.yaml"
    path.write_text("backends:\n  0:\n    type: process\n    settings:\n      port: abc\n")
    result = subprocess.run([sys.executable, "-m", "swarmd", "serve", "--backends", str(path), "--socket",
                             str(tmp_path / "s.sock")], capture_output=True, text=True, timeout=20)
    assert result.returncode == 1
    assert f"{path}:5:7: settings.port: expected an integer, got 'abc'" in result.stderr
