"""`swarmctl` against a running daemon: the commands, their output, and their exit statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.helpers import SLEEPER, Daemon, wait_until


def swarmctl(daemon: Daemon | None, *args: str, env: dict[str, str] | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "swarmd.ctl"]
    if daemon is not None:
        argv += ["--socket", str(daemon.socket)]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_list(daemon: Daemon) -> None:
    wait_until(lambda: daemon.backend(0)["status"] == "running", what="backend 0 running")
    done = swarmctl(daemon, "list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["ID", "TITLE", "TYPE", "STATUS", "PID", "GPU", "RESTARTS"]
    row = lines[1].split()
    assert row[:4] == ["0", "sleeper", "process", "running"] and row[4].isdigit() and row[6] == "0"
    as_json = json.loads(swarmctl(daemon, "list", "--json").stdout)
    assert as_json["0"]["pid"] == int(row[4])


def test_socket_from_the_environment(daemon: Daemon) -> None:
    done = swarmctl(None, "list", env={"SWARMD_SOCKET": str(daemon.socket)})
    assert done.returncode == 0 and "sleeper" in done.stdout


def test_edit(daemon: Daemon) -> None:
    added = json.loads(swarmctl(daemon, "--json", "add", "process", "--title", "ctl", f"command={SLEEPER}").stdout)
    backend_id = added["id"]
    assert added["settings"]["command"] == SLEEPER
    done = swarmctl(daemon, "edit", str(backend_id), "restart=always", "max_usages=3")
    assert done.returncode == 0, done.stderr
    assert f"edited backend {backend_id} ('ctl'" in done.stdout  # the title was kept
    definition = daemon.file_is_valid().backends[backend_id]
    assert definition.title == "ctl" and definition.settings["restart"] == "always"
    assert definition.settings["max_usages"] == 3
    done = swarmctl(daemon, "edit", str(backend_id), "--title", "renamed", "--new-id", str(backend_id + 50))
    assert done.returncode == 0, done.stderr
    assert daemon.file_is_valid().backends[backend_id + 50].title == "renamed"
    # A bad value: exit 1, the daemon's message, the file unchanged.
    before = daemon.file_bytes()
    done = swarmctl(daemon, "edit", str(backend_id + 50), "port=abc")
    assert done.returncode == 1
    assert "Invalid value for setting 'port': expected an integer, got 'abc'" in done.stderr
    assert daemon.file_bytes() == before
    done = swarmctl(daemon, "edit", "4242", "port=1")
    assert done.returncode == 1 and "Invalid backend ID 4242" in done.stderr


def test_logs_and_follow(daemon: Daemon) -> None:
    wait_until(lambda: daemon.ok("ListRecentLogMessages", {"types": ["backend-1"]})["data"]["backend-1"],
               what="ticker output")
    done = swarmctl(daemon, "logs", "1", "-n", "2")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 2
    assert all(line.startswith("tick ") for line in done.stdout.splitlines())
    follower = subprocess.Popen([sys.executable, "-m", "swarmd.ctl", "--socket", str(daemon.socket), "logs", "1",
                                 "--follow", "-n", "1"], stdout=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        seen = [int(follower.stdout.readline().split()[1]) for _ in range(4)]  # ticks every 0.2 s
        assert seen == sorted(seen) and len(set(seen)) == 4  # new lines, in order, none twice
    finally:
        follower.terminate()
        follower.wait(timeout=10)
    done = swarmctl(daemon, "logs", "4242")
    assert done.returncode == 1 and "Invalid backend ID 4242" in done.stderr
    # Any log by its name: the backend's (the same lines), or one of the daemon's level logs.
    done = swarmctl(daemon, "logs", "Process-1", "-n", "1")
    assert done.returncode == 0 and done.stdout.startswith("tick "), done.stderr
    done = swarmctl(daemon, "logs", "Init")
    assert done.returncode == 0 and "swarmd ready" in done.stdout, done.stderr
    done = swarmctl(daemon, "--json", "logs", "Init", "-n", "1")
    assert json.loads(done.stdout)["stream"] == "swarmd"
    done = swarmctl(daemon, "logs", "Nope")
    assert done.returncode == 1 and "Unknown log 'Nope'" in done.stderr


def test_restart_means_restart_also_while_loading(daemon: Daemon) -> None:
    """A backend that never becomes ready: `swarmctl restart` restarts it all the same (SwarmUI's
    RestartBackends, without swarmd's `force`, leaves a loading backend alone)."""
    hung = json.loads(swarmctl(daemon, "--json", "add", "process", f"command={SLEEPER}",
                               "ready_check=log:^never$", "ready_timeout=600").stdout)
    backend_id = hung["id"]
    wait_until(lambda: daemon.backend(backend_id)["status"] == "loading", what="loading")
    pid = daemon.backend(backend_id)["pid"]
    assert daemon.ok("RestartBackends", {"backend": str(backend_id)}) == {"result": "Success.", "count": 0}
    done = swarmctl(daemon, "restart", str(backend_id))
    assert done.returncode == 0 and done.stdout.strip() == f"restarted backend {backend_id} (it was loading)"
    wait_until(lambda: daemon.backend(backend_id)["pid"] not in (None, pid), what="a new process")
    assert swarmctl(daemon, "rm", str(backend_id)).returncode == 0
    missing = swarmctl(daemon, "restart", "4242")
    assert missing.returncode == 1 and "backend 4242 does not exist or is disabled" in missing.stdout


def test_list_and_status_show_the_cause(daemon: Daemon) -> None:
    crash = "python3 -c \"import sys; print('usage: main.py [-h]', file=sys.stderr); " \
            "print('main.py: error: unrecognized arguments: --no-such-flag', file=sys.stderr); sys.exit(2)\""
    added = json.loads(swarmctl(daemon, "--json", "add", "process", "--title", "bad flag", f"command={crash}",
                                "restart=never").stdout)
    backend_id = added["id"]
    wait_until(lambda: daemon.backend(backend_id)["status"] == "errored", what="errored")
    row = next(line for line in swarmctl(daemon, "list").stdout.splitlines() if "bad flag" in line)
    assert "errored: exited with status 2: main.py: error: unrecognized argume..." in row
    done = swarmctl(daemon, "status", str(backend_id))
    assert done.returncode == 0, done.stderr
    assert ("exited with status 2 (restart: never; restart it once fixed): main.py: error: unrecognized "
            "arguments: --no-such-flag" in done.stdout)
    assert "stderr: usage: main.py [-h]" in done.stdout and "last exit: exited with status 2" in done.stdout
    assert swarmctl(daemon, "rm", str(backend_id)).returncode == 0
    assert swarmctl(daemon, "status", "4242").returncode == 1


def test_other_commands(daemon: Daemon) -> None:
    added = json.loads(swarmctl(daemon, "--json", "add", "process", f"command={SLEEPER}").stdout)
    backend_id = str(added["id"])
    assert swarmctl(daemon, "disable", backend_id).stdout.strip() == "Success."
    assert swarmctl(daemon, "disable", backend_id).stdout.strip() == "No change."
    assert swarmctl(daemon, "enable", backend_id).stdout.strip() == "Success."
    wait_until(lambda: daemon.backend(int(backend_id))["status"] == "running", what="running again")
    assert swarmctl(daemon, "restart", backend_id).stdout.strip() == f"restarted backend {backend_id} (it was running)"
    assert swarmctl(daemon, "free", backend_id, "--system-ram").returncode == 0
    assert swarmctl(daemon, "rm", backend_id).stdout.strip() == "Deleted."
    assert swarmctl(daemon, "rm", backend_id).stdout.strip() == "Already didn't exist."
    types = swarmctl(daemon, "types")
    assert types.returncode == 0 and types.stdout.startswith("process: ")
    status = swarmctl(daemon, "status")
    assert status.returncode == 0 and "backends file:" in status.stdout
    assert json.loads(swarmctl(daemon, "status", "--json").stdout)["file_problem"] is None
    call = swarmctl(daemon, "call", "getnewsession", '{"session_id": "x"}')
    assert call.returncode == 0 and json.loads(call.stdout)["permissions"] == ["*"]
    call = swarmctl(daemon, "call", "EditBackend", "{}")
    assert call.returncode == 1 and json.loads(call.stdout) == {"error": "Missing required parameter 'backend_id'"}
    call = swarmctl(daemon, "call", "ListBackends", "not json")
    assert call.returncode == 1 and json.loads(call.stdout)["error_id"] == "internal_error"
    added = swarmctl(daemon, "add", "nope")
    assert added.returncode == 1 and "Invalid backend type: nope" in added.stderr


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["edit"], ["edit", "x"], ["rm", "1", "2"],
                                  ["edit", "1", "novalue"], ["restart", "some"]])
def test_usage_errors_exit_2(daemon: Daemon, args: list[str]) -> None:
    assert swarmctl(daemon, *args).returncode == 2


def test_cannot_connect_exits_3(tmp_path) -> None:
    missing = str(tmp_path / "nothing.sock")
    done = swarmctl(None, "--socket", missing, "list")
    assert done.returncode == 3 and missing in done.stderr and "no such socket" in done.stderr
    import socket

    stale = str(tmp_path / "stale.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(stale)
    sock.close()
    done = swarmctl(None, "--socket", stale, "list")
    assert done.returncode == 3 and stale in done.stderr and "refused" in done.stderr


def test_starts_fast() -> None:
    started = time.monotonic()
    done = swarmctl(None, "--socket", "/nonexistent/x.sock", "list")
    assert done.returncode == 3
    assert time.monotonic() - started < 2.0
    imported = subprocess.run([sys.executable, "-X", "importtime", "-c", "import swarmd.ctl"],
                              capture_output=True, text=True).stderr
    assert "trio" not in imported and "httpx" not in imported and "quart" not in imported
