"""Black-box reliability scenarios: a real `swarmd serve` acted on only from outside -- signals, the
socket, the file -- and checked by its state, its pids and the file afterwards."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from swarmd import backends_file
from tests.helpers import Daemon, alive, backend_yaml, pids_with_arg, rss_bytes, wait_until

PY = sys.executable


def listing(d: Daemon, full: bool = True) -> dict[str, dict]:
    return d.ok("ListBackends", {"full_data": full})


def settled(d: Daemon, expected: dict[int, str], timeout: float = 20.0) -> dict[str, dict]:
    def check():
        now = listing(d)
        return now if {int(k): v["status"] for k, v in now.items()} == expected else None

    return wait_until(check, timeout, what=f"statuses {expected}")  # type: ignore[return-value]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")



def test_sigkilled_daemon_with_20_backends_leaves_nothing_and_a_new_one_brings_all_back(start_daemon):
    marker = f"swarmd-rel-{os.getpid()}"
    backends = {i: {"settings": {"command": (
        f"sh -c \"{PY} -c 'import time; time.sleep(600)' {marker}-gc & "
        f"exec {PY} -c 'import time; time.sleep(600)' {marker}-main\"")}} for i in range(20)}
    first = start_daemon(backends)
    settled(first, dict.fromkeys(range(20), "running"))
    wait_until(lambda: len(pids_with_arg(f"{marker}-gc")) == 20, what="20 grandchildren")
    wait_until(lambda: len(pids_with_arg(f"{marker}-main")) == 20, what="20 main processes")
    first.kill()
    wait_until(lambda: not pids_with_arg(f"{marker}-gc") and not pids_with_arg(f"{marker}-main"), timeout=5,
               what="no backend process left")
    # The stale socket of the dead daemon is replaced; the file brings every backend back.
    second = start_daemon(None)
    settled(second, dict.fromkeys(range(20), "running"))
    wait_until(lambda: len(pids_with_arg(f"{marker}-main")) == 20, what="20 main processes again")


def test_misbehaving_backends_end_documented_and_the_daemon_stays_responsive_and_idle(start_daemon):
    ignore_term = f"{PY} -c \"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)\""
    d = start_daemon({
        0: {"title": "no such program", "settings": {"command": "/nonexistent/server --port {port}"}},
        1: {"title": "crashes at once", "settings": {"command": f"{PY} -c 'raise SystemExit(1)'",
                                                     "restart_delay": 0.05, "start_limit_burst": 3}},
        2: {"title": "hangs before ready", "settings": {
            "command": "sleep 600", "ready_check": "log:^ready$", "ready_timeout": 0.5,
            "start_limit_burst": 2, "restart_delay": 0, "stop_timeout": 0.5}},
        3: {"title": "ignores SIGTERM", "settings": {"command": ignore_term, "stop_timeout": 0.5}},
    })
    latencies = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # the API answers while backends crash, hang and get killed
        began = time.perf_counter()
        listing(d)
        latencies.append(time.perf_counter() - began)
        time.sleep(0.01)
    now = settled(d, {0: "errored", 1: "errored", 2: "errored", 3: "running"})
    assert "program '/nonexistent/server' not found" in now["0"]["status_message"]
    assert "gave up after 3 starts" in now["1"]["status_message"]
    assert "not ready within 0.5 s" in now["2"]["status_message"]
    assert statistics.median(latencies) < 0.05, f"median API latency {statistics.median(latencies):.3f} s"
    # The one that ignores SIGTERM is SIGKILLed after its stop_timeout when disabled.
    pid = now["3"]["pid"]
    began = time.monotonic()
    assert d.api("ToggleBackend", {"backend_id": 3, "enabled": False}) == {"result": "Success."}
    assert time.monotonic() - began < 5
    assert not alive(pid)
    # Settled: the daemon sits idle (no polling loop, no spinning restart).
    before = cpu_seconds(d.proc.pid)
    time.sleep(2)
    assert cpu_seconds(d.proc.pid) - before < 0.1
    assert listing(d)["1"]["restarts"] == 2


def test_a_storm_of_concurrent_mutations_and_hand_edits_loses_nothing(tmp_path, start_daemon):
    import fcntl

    clients = 10
    d = start_daemon({i: {"title": f"client-{i}", "settings": {"command": "sleep 600"}} for i in range(clients)})
    settled(d, dict.fromkeys(range(clients), "running"))
    acknowledged_adds: list[int] = []
    last_title: dict[int, str] = {}
    last_enabled: dict[int, bool] = {}
    hand_ids: list[int] = []
    problems: list[str] = []
    storm_over = threading.Event()

    def client(i: int) -> None:
        for n in range(20):
            kind = n % 3
            if kind == 0:
                answer = d.api("AddNewBackend", {"type_id": "process"})
                if "error" not in answer:
                    acknowledged_adds.append(int(answer["id"]))
            elif kind == 1:
                title = f"client-{i}-{n}"
                answer = d.api("EditBackend", {"backend_id": i, "title": title, "settings": {}})
                if "error" not in answer:
                    last_title[i] = title
            else:
                enabled = bool(n % 2)
                answer = d.api("ToggleBackend", {"backend_id": i, "enabled": enabled})
                if "error" not in answer:
                    last_enabled[i] = enabled
            if "error" in answer and "kept changing on disk" not in answer["error"]:
                problems.append(f"client {i}: {answer}")

    def hand_editor() -> None:
        for n in range(20):
            fd = os.open(f"{d.backends}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # a careful config tool: see backends_file's write lock
                new_id = 90000 - n
                text = d.backends.read_text() + f"  {new_id}:\n    type: process\n    title: hand-{n}\n"
                temp = tmp_path / f".hand-{n}"
                temp.write_text(text)
                os.replace(temp, d.backends)
            finally:
                os.close(fd)
            hand_ids.append(new_id)
            time.sleep(random.uniform(0, 0.02))

    def reader() -> None:
        while not storm_over.is_set():
            try:
                backends_file.parse(str(d.backends), d.backends.read_bytes())
            except backends_file.FileInvalid as err:
                problems.append(f"invalid file seen mid-storm: {err}")
            time.sleep(0.005)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads += [threading.Thread(target=hand_editor)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(240)
    storm_over.set()
    watcher.join()
    assert not problems, problems[:5]
    final = backends_file.read(str(d.backends))
    assert set(acknowledged_adds) <= set(final.backends), "an acknowledged AddNewBackend is missing"
    assert set(hand_ids) <= set(final.backends), "a hand edit was lost"
    for i, title in last_title.items():
        assert final.backends[i].title == title
    for i, enabled in last_enabled.items():
        assert final.backends[i].enabled is enabled
    # After the storm the daemon's state is the file's.
    def same():
        now = listing(d, full=False)
        return {int(k): (v["title"], v["enabled"]) for k, v in now.items()} == {
            k: (b.title, b.enabled) for k, b in final.backends.items()}

    wait_until(same, what="daemon state equal to the file")


def test_disk_full_and_read_only_config_fail_cleanly(tmp_path, start_daemon):
    mount = tmp_path / "etc"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        path = mount / "backends.yaml"
        path.write_text(backend_yaml({0: {"settings": {"command": "sleep 600"}}}))
        d = start_daemon(None, backends_path=path)
        settled(d, {0: "running"})
        before_text, before_state = path.read_bytes(), listing(d, full=False)
        filler = mount / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill the filesystem to the last block
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        answer = d.api("AddNewBackend", {"type_id": "process"})
        assert "No space left on device" in answer["error"] and "Nothing was changed" in answer["error"]
        answer = d.api("EditBackend", {"backend_id": 0, "title": "x" * 5000, "settings": {}})
        assert "No space left on device" in answer["error"]
        assert path.read_bytes() == before_text
        assert listing(d, full=False) == before_state
        # no temp file left (the write lock, made at start, stays)
        assert sorted(p.name for p in mount.iterdir()) == ["backends.yaml", "backends.yaml.lock", "filler"]
        filler.unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        answer = d.api("ToggleBackend", {"backend_id": 0, "enabled": False})
        assert "read-only" in answer["error"].lower() and "Nothing was changed" in answer["error"]
        assert path.read_bytes() == before_text
        assert listing(d, full=False) == before_state
        assert d.stop(signal.SIGTERM) == 0
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def raw_exchange(sock_path: Path, payload: bytes, timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(sock_path))
        try:
            sock.sendall(payload)  # every request says Connection: close (or is garbage): read to EOF
        except OSError:
            pass  # the server may close on us mid-send: that is an acceptable answer
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if sep and length and len(body) >= int(length.group(1)):
                    break  # a whole answer: no need to wait for the server to close
        except (TimeoutError, ConnectionResetError):
            pass
        return data


def hostile_requests() -> list[bytes]:
    def post(path: str, body: bytes, content_type: str = "application/json") -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: swarmd\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body

    cases = [
        post("/API/ListBackends", b"{" * 5000),
        post("/API/ListBackends", b"[" * 100000 + b"]" * 100000),
        post("/API/EditBackend", b'{"backend_id": 0, "title": "\xff\xfe", "settings": {}}'),
        post("/API/EditBackend", b"\xff\xfe\xfd"),
        post("/API/../../../etc/passwd", b"{}"),
        post("/API/%2e%2e/%2e%2e/etc/passwd", b"{}"),
        post("/../API/ListBackends", b"{}"),
        post("/API/ListBackends", b"{}", "text/plain"),
        post("/API/ListRecentLogMessages", json.dumps({"types": ["backend-../../etc/passwd", "/etc/shadow"],
                                                        "last_sequence_ids": {"x": "y"}}).encode()),
        post("/API/EditBackend", json.dumps({"backend_id": "../0", "title": None, "settings": []}).encode()),
        b"GET /API/ListBackends HTTP/1.1\r\nHost: swarmd\r\nConnection: close\r\n\r\n",
        b"BREW /API/ListBackends HTCPCP/1.0\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),
        b"POST /API/ListBackends HTTP/1.1\r\nContent-Length: -5\r\n\r\n{}",
        b"POST /API/ListBackends HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        post("/API/ListBackends", b"x" * (3 * 1024 * 1024)),
    ]
    return cases


def test_hostile_requests_get_json_errors_or_a_closed_connection(start_daemon):
    d = start_daemon({0: {"settings": {"command": "sleep 600"}}})
    settled(d, {0: "running"})
    before_text = d.backends.read_bytes()
    rss_before = rss_bytes(d.proc.pid)
    # Slowloris: connections that send half a request and then wait.
    loris = []
    for _ in range(50):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(d.socket))
        sock.sendall(b"POST /API/ListBackends HTTP/1.1\r\nHost: swarmd\r\nContent-Len")
        loris.append(sock)
    try:
        cases = hostile_requests()
        for n in range(1000):
            answer = raw_exchange(d.socket, cases[n % len(cases)])
            if answer:
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 "), head[:80]
                if not re.match(rb"HTTP/1.1 (4\d\d|5\d\d)", head) or b"json" in head.lower():
                    json.loads(body)  # every answer with a body we wrote is JSON
                assert not head.startswith(b"HTTP/1.1 500") or b"json" in head.lower()
            if n % 100 == 0:  # and the daemon keeps serving others meanwhile
                assert "0" in listing(d, full=False)
    finally:
        for sock in loris:
            sock.close()
    assert listing(d, full=False)["0"]["status"] == "running"
    assert d.backends.read_bytes() == before_text
    assert rss_bytes(d.proc.pid) - rss_before < 64 * 1024 * 1024


def tracer_pids(pid: int) -> dict[int, int]:
    """{thread id: TracerPid} for every thread of process `pid` (0: not traced)."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        found[int(tid)] = int(re.search(r"^TracerPid:\s*(\d+)", status, re.M)[1])
    return found


def thread_lines(trace: str, threads: set[int]) -> list[str]:
    """The lines of an `strace -f` log (each prefixed by its thread id) written by the threads of one
    process: `threads` (its threads when strace attached) and every thread they started later (clone with
    CLONE_THREAD). The lines of the processes it started are left out: running commands is their job."""
    started: list[tuple[int, bool, int]] = []  # (caller, CLONE_THREAD, new id)
    unfinished: dict[int, bool] = {}
    lines = [line.split(" ", 1) for line in trace.splitlines() if line[:1].isdigit() and " " in line]
    for tid_text, call in lines:
        tid = int(tid_text)
        if call.startswith(("clone(", "clone3(", "<... clone resumed>", "<... clone3 resumed>")):
            is_thread = unfinished.pop(tid, False) if call.startswith("<...") else "CLONE_THREAD" in call
            if call.endswith("<unfinished ...>"):
                unfinished[tid] = is_thread
            elif (new := re.search(r"\) = (\d+)$", call)) is not None:
                started.append((tid, is_thread, int(new[1])))
    known = set(threads)
    while grown := {new for caller, is_thread, new in started if is_thread and caller in known} - known:
        known |= grown
    return [call for tid_text, call in lines if int(tid_text) in known]


def test_no_parameter_makes_the_daemon_touch_another_path(tmp_path, start_daemon):
    d = start_daemon({0: {"settings": {"command": "sleep 600"}}})
    settled(d, {0: "running"})
    trace, errors = tmp_path / "trace", tmp_path / "strace.err"
    # -f: strace attaches to every thread of the daemon and to those it starts later; the processes it
    # starts are traced too, and their lines left out below (thread_lines).
    with errors.open("wb") as stderr:
        tracer = subprocess.Popen(["strace", "-qq", "-f", "-e", "trace=%file,clone,clone3", "-e", "signal=none",
                                   "-o", str(trace), "-p", str(d.proc.pid)], stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        def attached() -> dict[int, int] | None:
            if tracer.poll() is not None:
                raise AssertionError(f"strace exited with {tracer.returncode}: {errors.read_text()}")
            tracers = tracer_pids(d.proc.pid)
            return tracers if all(tracers.values()) else None

        threads = set(wait_until(attached, timeout=20, what="strace attached to every thread of the daemon"))
        evil = ["../../etc/passwd", "/etc/shadow", "backend-../../../tmp/x", "%2e%2e/etc", "\x00/etc/hosts",
                str(tmp_path / "elsewhere.yaml")]
        for value in evil:
            d.api("EditBackend", {"backend_id": 0, "title": value, "settings": {"cwd": value}})
            d.api("EditBackend", {"backend_id": value, "title": value, "settings": {}})
            d.api("ListRecentLogMessages", {"types": [value], "last_sequence_ids": {value: value}})
            d.api("DeleteBackend", {"backend_id": value})
            d.api("AddNewBackend", {"type_id": value})
            d.api("RestartBackends", {"backend": value})
            d.api("FreeBackendMemory", {"backend": value})
            d.api("ListLogTypes", {value: value})
        time.sleep(0.3)  # what the daemon does right after its answers (restarts, write-backs) is traced too
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
    touched = set()
    for call in thread_lines(trace.read_text(), threads):
        for path in re.findall(r'"((?:[^"\\]|\\.)*)"', call):
            touched.add(path)
    # the control: the trace holds the daemon's own writes of the backends file (EditBackend of backend 0)
    assert any(p.startswith(str(d.backends)) for p in touched), sorted(touched)
    allowed_prefixes = (str(tmp_path), "/proc/", "/sys/", "/dev/", "/etc/localtime", "/usr/", "/lib",
                        sys.prefix, sys.base_prefix, "/etc/ld.so", "/etc/nsswitch.conf", "/etc/passwd",
                        "/etc/group")
    # (the directories above the backends file are looked at when its real path is resolved)
    ancestors = {str(parent) for parent in tmp_path.parents}
    outside = sorted(p for p in touched
                     if not p.startswith(allowed_prefixes) and p not in (".", "") and p not in ancestors)
    assert not outside, outside
    assert not set(evil) & touched, set(evil) & touched
    assert not (tmp_path / "elsewhere.yaml").exists()
