"""A daemon that nothing it supervises can bring down: bad settings, stalled stderr, slow stops, hostile
locks, bad text. Real daemons, real children, real files, real signals."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.helpers import NOBODY, Daemon, backend_yaml, nobody_python, public_dir, rss_bytes, wait_until

PY = sys.executable
SLEEP = f"{PY} -c 'import time; time.sleep(600)'"
#: Ready (its log line) only once SIGTERM is ignored.
IGNORES_TERM = (f"{PY} -c \"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', "
                "flush=True); time.sleep(600)\"")


def listing(d: Daemon) -> dict[str, dict]:
    return d.ok("ListBackends", {"full_data": True})


def running_pids(d: Daemon, count: int) -> dict[int, int]:
    def ready():
        now = listing(d)
        if len(now) == count and all(v["status"] == "running" for v in now.values()):
            return {int(k): v["pid"] for k, v in now.items()}
        return None

    return wait_until(ready, what=f"{count} backends running")  # type: ignore[return-value]


def save(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.edit")
    temp.write_text(text)
    os.replace(temp, path)


# -- the two crash cases: refused everywhere, with a location ------------------------------------------------

BAD_ADDRESS = "http://[::1"
BAD_READY = "http://127.0.0.1:99999/"


def test_bad_urls_are_refused_at_add_edit_check_load_and_reload(tmp_path, start_daemon):
    d = start_daemon({0: {"settings": {"command": SLEEP}}})
    pid = running_pids(d, 1)[0]
    before = d.backends.read_bytes()
    answer = d.api("AddNewBackend", {"type_id": "comfyui_api", "settings": {"Address": BAD_ADDRESS}})
    assert "Invalid value for setting 'Address'" in answer["error"] and "http://[::1" in answer["error"]
    answer = d.api("EditBackend", {"backend_id": 0, "title": "x", "settings": {"ready_check": BAD_READY}})
    assert "Invalid value for setting 'ready_check'" in answer["error"] and "99999" in answer["error"]
    ctl = subprocess.run([PY, "-m", "swarmd.ctl", "--socket", str(d.socket), "add", "comfyui_api",
                          f"Address={BAD_ADDRESS}"], capture_output=True, text=True, timeout=30)
    assert ctl.returncode == 1 and "Address" in ctl.stderr
    assert d.backends.read_bytes() == before
    # A hand edit with both: located problems in the log, the running fleet kept.
    bad = before.decode() + ("  1:\n    type: comfyui_api\n    settings:\n      Address: \"http://[::1\"\n"
                             "  2:\n    type: process\n    settings:\n      command: sleep 1\n"
                             f"      ready_check: {BAD_READY}\n")
    save(d.backends, bad)
    d.wait_log(r"backends.yaml:\d+:\d+: settings.Address: ")
    d.wait_log(r"backends.yaml:\d+:\d+: settings.ready_check: ")
    assert list(listing(d)) == ["0"] and listing(d)["0"]["pid"] == pid
    # `swarmd check` and `swarmd serve` refuse the same file with the same located lines.
    check = subprocess.run([PY, "-m", "swarmd", "check", "--backends", str(d.backends)], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 1
    located = [line for line in check.stdout.splitlines() if line.startswith(str(d.backends) + ":")]
    assert len(located) == 2 and "settings.Address" in located[0] and "settings.ready_check" in located[1]
    serve = subprocess.run([PY, "-m", "swarmd", "serve", "--backends", str(d.backends), "--socket",
                            str(tmp_path / "other.sock")], capture_output=True, text=True, timeout=30)
    assert serve.returncode == 1 and located[0] in serve.stderr
    assert d.proc.poll() is None and listing(d)["0"]["pid"] == pid


# -- memory equals the file -------------------------------------------------------------------------------------


def test_a_two_line_env_keeps_its_pid_across_an_unrelated_hand_edit(start_daemon):
    d = start_daemon({0: {"settings": {"command": SLEEP}}, 1: {"settings": {"command": SLEEP}}})
    running_pids(d, 2)
    answer = d.api("EditBackend", {"backend_id": 0, "title": "env", "settings": {"env": "A=1\nB=2"}})
    assert answer["settings"]["env"] == "A=1\nB=2" and answer["modcount"] == 1
    pids = running_pids(d, 2)
    reloads = d.log().count("reloaded ")
    save(d.backends, d.backends.read_text().replace('title: "b1"', 'title: "hand-edited"'))
    wait_until(lambda: listing(d)["1"]["title"] == "hand-edited", what="the hand edit applied")
    d.wait_log("reloaded ", count=reloads + 1)  # (the log is written through a queue: it may lag the state)
    assert d.log().count("reloaded ") == reloads + 1
    now = listing(d)
    assert now["0"]["pid"] == pids[0] and now["0"]["modcount"] == 1 and now["0"]["settings"]["env"] == "A=1\nB=2"


# -- nothing one backend does stalls the others ----------------------------------------------------------------


def test_a_slow_stop_delays_nothing_else(start_daemon):
    d = start_daemon({0: {"settings": {"command": IGNORES_TERM, "stop_timeout": 30, "ready_check": "log:^ready$"}},
                      1: {"settings": {"command": SLEEP}}})
    pids = running_pids(d, 2)
    began = time.monotonic()
    answer = d.api("EditBackend", {"backend_id": 0, "title": "slow", "settings": {"stop_timeout": "29"}})
    assert answer["status"] == "waiting"  # its stop ladder has begun (it ignores SIGTERM: 30 s)
    answer = d.api("EditBackend", {"backend_id": 1, "title": "other", "settings": {"max_usages": "2"}})
    assert answer["title"] == "other"
    assert "1" in d.api("ListBackends")
    assert time.monotonic() - began < 3, "a stop ladder held up other requests"
    assert listing(d)["0"]["pid"] == pids[0]  # still in its ladder
    # and a toggle of the other one answers at once too
    assert d.api("ToggleBackend", {"backend_id": 1, "enabled": False}) == {"result": "Success."}
    assert time.monotonic() - began < 6
    d.kill()  # backend 0 is still in its 30 s stop ladder: a SIGTERM would wait for it


def test_sigterm_during_the_reload_of_a_large_file_acts_at_once(start_daemon):
    d = start_daemon({0: {"settings": {"command": SLEEP}}})
    running_pids(d, 1)
    big = {i: {"enabled": False, "settings": {"command": f"sleep {i}", "env": f"N={i}"}} for i in range(20000)}
    big[0] = {"settings": {"command": SLEEP}}
    save(d.backends, backend_yaml(big))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("SIGHUP: reloading")
    began = time.monotonic()
    assert d.stop(signal.SIGTERM, timeout=30) == 0
    stopped = time.monotonic() - began
    assert "reloaded" not in d.log(), "the reload finished first: make the file larger"
    assert stopped < 2.0, f"SIGTERM took {stopped:.2f} s during a reload"


def test_an_unprivileged_user_holding_every_lock_it_can_delays_nothing(start_daemon):
    if os.geteuid() != 0 or nobody_python() is None or shutil.which("setpriv") is None:
        pytest.skip("needs root, setpriv and a python3 that uid 65534 can run")
    directory = public_dir()  # uid 65534 must reach the files to lock them
    try:
        d = start_daemon({0: {"settings": {"command": SLEEP}}}, directory=directory)
        running_pids(d, 1)
        d.api("EditBackend", {"backend_id": 0, "title": "first write", "settings": {}})  # lock file made
        locker = f"""
import fcntl, os, sys, time
held = []
for path in {[str(directory), str(d.backends), str(d.backends) + ".lock"]!r} + [
        os.path.join({str(directory)!r}, n) for n in os.listdir({str(directory)!r})]:
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
        try:
            fd = os.open(path, flags)
        except OSError:
            continue
        for how in (lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB),
                    lambda: fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB),
                    lambda: fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB),
                    lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)):
            try:
                how()
                held.append(path)
            except OSError:
                pass
print(sorted(set(held)), flush=True)
time.sleep(600)
"""
        holder = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                                   nobody_python(), "-I", "-c", locker], stdout=subprocess.PIPE, text=True,
                                  cwd="/")
        try:
            held = json.loads(holder.stdout.readline().replace("'", '"'))
            assert str(directory) in held, "the test did not get the directory lock it meant to hold"
            assert str(d.backends) + ".lock" not in held
            began = time.monotonic()
            answer = d.api("EditBackend", {"backend_id": 0, "title": "root edits", "settings": {}})
            assert answer["title"] == "root edits"
            assert time.monotonic() - began < 5  # not even the lock deadline
            save(d.backends, d.backends.read_text().replace('title: "root edits"', 'title: "hand edit"'))
            wait_until(lambda: listing(d)["0"]["title"] == "hand edit", timeout=10, what="the hand edit applied")
            began = time.monotonic()
            assert d.stop(signal.SIGTERM, timeout=20) == 0
            assert time.monotonic() - began < 5
        finally:
            holder.kill()
            holder.wait()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def pipe_unread(fd: int) -> int:
    """Bytes written to the pipe whose read end is `fd` that nobody has read yet."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]


def test_a_stderr_nobody_reads_stalls_nothing(start_daemon):
    flood = f"{PY} -c \"import sys\nwhile True: sys.stdout.write('x' * 200 + chr(10))\""
    read_end, write_end = os.pipe()
    try:
        daemon = start_daemon({0: {"settings": {"command": flood}}, 1: {"settings": {"command": SLEEP}}},
                              stdout=write_end)
        wait_until(lambda: len(listing(daemon)) == 2 and listing(daemon)["1"]["status"] == "running")
        # The flood's lines go to the daemon's stderr, this pipe, which fills up (to within one write of
        # its capacity); the daemon goes on.
        capacity = fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ)
        wait_until(lambda: pipe_unread(read_end) >= capacity - 4096, timeout=10, what="the daemon's stderr full")
        for _ in range(20):
            began = time.monotonic()
            assert "0" in daemon.ok("ListBackends", timeout=5)
            assert time.monotonic() - began < 1.0
        pid = listing(daemon)["1"]["pid"]
        os.kill(pid, signal.SIGKILL)  # restarts still happen
        wait_until(lambda: listing(daemon)["1"]["pid"] not in (None, pid) and listing(daemon)["1"]["status"] ==
                   "running", timeout=10, what="backend 1 restarted")
        began = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(15) == 0
        assert time.monotonic() - began < 10
    finally:
        os.close(read_end)
        os.close(write_end)


# -- bad text ---------------------------------------------------------------------------------------------------

SURROGATE = "\ud800"


def test_a_lone_surrogate_in_every_text_parameter_is_refused(start_daemon):
    d = start_daemon({0: {"settings": {"command": SLEEP}}})
    running_pids(d, 1)
    before = d.backends.read_bytes()
    calls = [
        ("AddNewBackend", {"type_id": SURROGATE}),
        ("AddNewBackend", {"type_id": "process", "title": SURROGATE}),
        ("AddNewBackend", {"type_id": "process", "settings": {"command": f"sleep {SURROGATE}"}}),
        ("AddNewBackend", {"type_id": "comfyui_api", "settings": {"Address": f"http://{SURROGATE}:1"}}),
        ("EditBackend", {"backend_id": 0, "title": SURROGATE, "settings": {}}),
        ("EditBackend", {"backend_id": 0, "title": "t", "settings": {"env": f"A={SURROGATE}"}}),
        ("EditBackend", {"backend_id": 0, "title": "t", "settings": {"cwd": SURROGATE}}),
        ("EditBackend", {"backend_id": 0, "title": "t", "settings": {"restart": SURROGATE}}),
        ("EditBackend", {"backend_id": 0, "title": "t", "settings": {SURROGATE: "x"}}),
        ("RestartBackends", {"backend": SURROGATE}),
        ("FreeBackendMemory", {"backend": SURROGATE}),
        ("ListRecentLogMessages", {"types": [SURROGATE], "last_sequence_ids": {SURROGATE: 1}}),
        ("DeleteBackend", {"backend_id": SURROGATE}),
    ]
    for route, body in calls:
        answer = d.api(route, body)  # json.dumps escapes the surrogate as \ud800
        assert answer.get("error_id") != "internal_error", (route, body, answer)
        if route in ("AddNewBackend", "EditBackend"):
            assert "error" in answer, (route, body, answer)
        assert d.backends.read_bytes() == before, (route, body)
        assert "0" in d.api("ListBackends")
    assert len(d.api("ListBackends")) == 1
    assert d.stop() == 0  # its log is complete once it has exited
    assert "Traceback" not in d.log()


def test_an_alias_bomb_in_env_is_a_located_error_and_memory_stays_flat(start_daemon):
    d = start_daemon({0: {"settings": {"command": SLEEP}}})
    pid = running_pids(d, 1)[0]
    rss_before = rss_bytes(d.proc.pid)
    levels = ["      a: &a [" + ", ".join(['"xxxxxxxxxx"'] * 10) + "]"]
    for n in range(1, 9):
        levels.append(f"      l{n}: &l{n} [" + ", ".join([f"*{'a' if n == 1 else f'l{n - 1}'}"] * 10) + "]")
    bomb = d.backends.read_text() + "  1:\n    type: process\n    settings:\n      command: sleep 1\n      env:\n" + \
        "\n".join("  " + line for line in levels) + "\n"
    save(d.backends, bomb)
    d.wait_log(r"backends.yaml:\d+:\d+: settings.env")
    assert listing(d)["0"]["pid"] == pid and len(listing(d)) == 1
    assert rss_bytes(d.proc.pid) - rss_before < 50 * 1024 * 1024
    # `swarmd check` says the same, and stays small (its peak RSS, measured by a parent of its own).
    measure = ("import resource, subprocess, sys\n"
               "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
               "print(done.stdout)")
    check = subprocess.run([PY, "-c", measure, PY, "-m", "swarmd", "check", "--backends", str(d.backends)],
                           capture_output=True, text=True, timeout=60)
    code, peak_kib = check.stdout.split("\n", 1)[0].split()
    assert code == "1" and "settings.env" in check.stdout
    assert int(peak_kib) < 200 * 1024, f"swarmd check peaked at {int(peak_kib) // 1024} MiB"

