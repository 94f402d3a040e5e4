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
from tests.helpers import Daemon, api, backend_yaml, pids_with, pids_with_arg, wait_socket, wait_until

PY = sys.executable


@pytest.fixture
def daemons():
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.stop(signal.SIGTERM)


def start(tmp_path, daemons, backends, **kwargs) -> Daemon:
    daemon = Daemon(tmp_path, backend_yaml(backends) if isinstance(backends, dict) else backends, **kwargs)
    daemons.append(daemon)
    wait_socket(daemon.socket)
    return daemon


def listing(d: Daemon, full: bool = True) -> dict[str, dict]:
    return api(d.socket, "ListBackends", {"full_data": full})


def settled(d: Daemon, expected: dict[int, str], timeout: float = 20.0) -> dict[str, dict]:
    def check():
        now = listing(d)
        return now if {int(k): v["status"] for k, v in now.items()} == expected else None

    return wait_until(check, timeout, what=f"statuses {expected}")  # type: ignore[return-value]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_sigkilled_daemon_with_20_backends_leaves_nothing_and_a_new_one_brings_all_back(tmp_path, daemons):
    marker = f"swarmd-rel-{os.getpid()}"
    backends = {i: {"settings": {"command": (
        f"sh -c \"{PY} -c 'import time; time.sleep(600)' {marker}-gc & "
        f"exec {PY} -c 'import time; time.sleep(600)' {marker}-main\"")}} for i in range(20)}
    first = start(tmp_path, daemons, backends)
    settled(first, dict.fromkeys(range(20), "running"))
    wait_until(lambda: len(pids_with_arg(f"{marker}-gc")) == 20, what="20 grandchildren")
    first.proc.kill()
    first.proc.wait()
    wait_until(lambda: not pids_with(marker), timeout=5, what="no backend process left")
    # The stale socket of the dead daemon is replaced; the file brings every backend back.
    second = start(tmp_path, daemons, None)
    settled(second, dict.fromkeys(range(20), "running"))
    wait_until(lambda: len(pids_with_arg(f"{marker}-main")) == 20, what="20 main processes again")


def test_misbehaving_backends_end_documented_and_the_daemon_stays_responsive_and_idle(tmp_path, daemons):
    ignore_term = f"{PY} -c \"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)\""
    d = start(tmp_path, daemons, {
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
    assert api(d.socket, "ToggleBackend", {"backend_id": 3, "enabled": False}) == {"result": "Success."}
    assert time.monotonic() - began < 5
    assert not os.path.exists(f"/proc/{pid}") or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    # Settled: the daemon sits idle (no polling loop, no spinning restart).
    before = cpu_seconds(d.proc.pid)
    time.sleep(2)
    assert cpu_seconds(d.proc.pid) - before < 0.1
    assert listing(d)["1"]["restarts"] == 2


def test_a_storm_of_concurrent_mutations_and_hand_edits_loses_nothing(tmp_path, daemons):
    import fcntl

    clients = 10
    d = start(tmp_path, daemons, {i: {"title": f"client-{i}", "settings": {"command": "sleep 600"}}
                                  for i in range(clients)})
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
                answer = api(d.socket, "AddNewBackend", {"type_id": "process"})
                if "error" not in answer:
                    acknowledged_adds.append(int(answer["id"]))
            elif kind == 1:
                title = f"client-{i}-{n}"
                answer = api(d.socket, "EditBackend", {"backend_id": i, "title": title, "settings": {}})
                if "error" not in answer:
                    last_title[i] = title
            else:
                enabled = bool(n % 2)
                answer = api(d.socket, "ToggleBackend", {"backend_id": i, "enabled": enabled})
                if "error" not in answer:
                    last_enabled[i] = enabled
            if "error" in answer and "kept changing on disk" not in answer["error"]:
                problems.append(f"client {i}: {answer}")

    def hand_editor() -> None:
        for n in range(20):
            fd = os.open(tmp_path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # a careful config tool: see backends_file.directory_lock
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


def test_disk_full_and_read_only_config_fail_cleanly(tmp_path, daemons):
    mount = tmp_path / "etc"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        path = mount / "backends.yaml"
        path.write_text(backend_yaml({0: {"settings": {"command": "sleep 600"}}}))
        d = start(tmp_path, daemons, None, backends_path=path)
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
        answer = api(d.socket, "AddNewBackend", {"type_id": "process"})
        assert "No space left on device" in answer["error"] and "Nothing was changed" in answer["error"]
        answer = api(d.socket, "EditBackend", {"backend_id": 0, "title": "x" * 5000, "settings": {}})
        assert "No space left on device" in answer["error"]
        assert path.read_bytes() == before_text
        assert listing(d, full=False) == before_state
        assert sorted(p.name for p in mount.iterdir()) == ["backends.yaml", "filler"]  # no temp left
        filler.unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        answer = api(d.socket, "ToggleBackend", {"backend_id": 0, "enabled": False})
        assert "read-only" in answer["error"].lower() and "Nothing was changed" in answer["error"]
        assert path.read_bytes() == before_text
        assert listing(d, full=False) == before_state
        d.stop(signal.SIGTERM)
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


def test_hostile_requests_get_json_errors_or_a_closed_connection(tmp_path, daemons):
    d = start(tmp_path, daemons, {0: {"settings": {"command": "sleep 600"}}})
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


def test_no_parameter_makes_the_daemon_touch_another_path(tmp_path, daemons):
    d = start(tmp_path, daemons, {0: {"settings": {"command": "sleep 600"}}})
    settled(d, {0: "running"})
    trace = tmp_path / "trace"
    # Trace the daemon's own threads (not the children it starts: running commands is their job).
    tracer = subprocess.Popen(["strace", "-qq", "-e", "trace=%file", "-o", str(trace), "-p",
                               str(d.proc.pid)] + sum((["-p", t] for t in os.listdir(f"/proc/{d.proc.pid}/task")
                                                       if t != str(d.proc.pid)), []),
                              stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    evil = ["../../etc/passwd", "/etc/shadow", "backend-../../../tmp/x", "%2e%2e/etc", "\x00/etc/hosts",
            str(tmp_path / "elsewhere.yaml")]
    for value in evil:
        api(d.socket, "EditBackend", {"backend_id": 0, "title": value, "settings": {"cwd": value}})
        api(d.socket, "EditBackend", {"backend_id": value, "title": value, "settings": {}})
        api(d.socket, "ListRecentLogMessages", {"types": [value], "last_sequence_ids": {value: value}})
        api(d.socket, "DeleteBackend", {"backend_id": value})
        api(d.socket, "AddNewBackend", {"type_id": value})
        api(d.socket, "RestartBackends", {"backend": value})
        api(d.socket, "FreeBackendMemory", {"backend": value})
        api(d.socket, "ListLogTypes", {value: value})
    time.sleep(0.3)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(10)
    touched = set()
    for line in trace.read_text().splitlines():
        for path in re.findall(r'"((?:[^"\\]|\\.)*)"', line):
            touched.add(path)
    allowed_prefixes = (str(tmp_path), "/proc/", "/sys/", "/dev/", "/etc/localtime", "/usr/", "/lib",
                        sys.prefix, sys.base_prefix, "/etc/ld.so", "/etc/nsswitch.conf", "/etc/passwd",
                        "/etc/group")
    # (the directories above the backends file are looked at when its real path is resolved)
    ancestors = {str(parent) for parent in tmp_path.parents}
    outside = sorted(p for p in touched
                     if not p.startswith(allowed_prefixes) and p not in (".", "") and p not in ancestors)
    assert not outside, outside
    for value in evil:
        assert value not in touched or value.startswith(str(tmp_path)) and value.endswith("backends.yaml")
    assert not (tmp_path / "elsewhere.yaml").exists()
