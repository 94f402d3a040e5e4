"""`/metrics` end to end: a real daemon with real children, scraped on its unix socket and on the read-only
HTTP listener, parsed with prometheus_client's own text parser (tests/metrics_tools.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import pytest

from swarmd.api.routes import ROUTES
from tests.helpers import NOBODY, SLEEPER, daemon_with_config, nobody_python, wait_until
from tests.metrics_tools import samples, scrape, start_with_listener, value, web_get

#: A title that needs every escape of the exposition format: quotes, backslashes and a newline.
NASTY_TITLE = 'say "hi" \\ C:\\path\nsecond line'
#: Prints three lines, then waits; SIGUSR1 (its free_memory hook) prints one more.
FREEABLE = ("python3 -u -c \"import signal, time; "
            "signal.signal(signal.SIGUSR1, lambda *a: print('freed')); "
            "print('one'); print('two'); print('three'); time.sleep(600)\"")


def _running(daemon, backend_id: int, not_pid: int | None = None) -> dict:
    def ready() -> dict | None:
        backend = daemon.backend(backend_id)
        if backend and backend["status"] == "running" and backend["pid"] not in (None, not_pid):
            return backend
        return None

    return wait_until(ready, what=f"backend {backend_id} running (pid not {not_pid})")


def test_series_after_a_start_a_crash_and_a_free(start_daemon):
    daemon = start_daemon({
        0: {"title": NASTY_TITLE, "settings": {"command": FREEABLE, "free_memory": "signal:SIGUSR1"}},
        1: {"title": "sleeper", "settings": {"command": SLEEPER, "restart_delay": 0.1}},
        2: {"title": "off", "enabled": False, "settings": {"command": SLEEPER}},
    })
    _running(daemon, 0)
    first = _running(daemon, 1)
    wait_until(lambda: len(daemon.ok("ListRecentLogMessages", {"types": ["backend-0"]})["data"]["backend-0"]) >= 3,
               what="backend 0's three lines")

    text, fams = scrape(daemon)
    b0 = {"id": "0", "title": NASTY_TITLE, "type": "process"}
    b1 = {"id": "1", "title": "sleeper", "type": "process"}
    b2 = {"id": "2", "title": "off", "type": "process"}
    # The title's label comes back exactly as written, and the text carries it escaped.
    assert 'title="say \\"hi\\" \\\\ C:\\\\path\\nsecond line"' in text
    for labels, current in ((b0, "running"), (b1, "running"), (b2, "disabled")):
        for status in ("running", "loading", "waiting", "idle", "errored", "disabled"):
            assert value(fams, "swarmd_backend_status", **labels, status=status) == (status == current)
    assert value(fams, "swarmd_backend_up", **b0) == 1 and value(fams, "swarmd_backend_up", **b2) == 0
    assert value(fams, "swarmd_backend_enabled", **b2) == 0
    assert time.time() - 60 < value(fams, "swarmd_backend_ready_since_seconds", **b1) <= time.time()
    assert samples(fams, "swarmd_backend_ready_since_seconds", **b2) == []  # only while running
    assert value(fams, "swarmd_backend_starts_total", **b1) == 1
    assert value(fams, "swarmd_backend_restarts_total", **b1) == 0
    assert value(fams, "swarmd_backend_start_to_ready_seconds_count", **b1) == 1
    assert value(fams, "swarmd_backend_start_to_ready_seconds_bucket", **b1, le="+Inf") == 1
    assert value(fams, "swarmd_backend_output_lines_total", **b0) == 3
    assert value(fams, "swarmd_backend_output_bytes_total", **b0) >= len("onetwothree")
    assert value(fams, "swarmd_backends", status="running") == 2
    assert value(fams, "swarmd_backends_file_valid") == 1
    # The process collector: swarmd's own CPU, memory and descriptors.
    assert value(fams, "process_resident_memory_bytes") > 10 << 20
    assert value(fams, "process_open_fds") > 3
    assert "process_cpu_seconds_total" in {s.name for s in samples(fams, "process_cpu_seconds_total")}

    # A crash: SIGKILL the sleeper; the policy restarts it.
    os.kill(first["pid"], signal.SIGKILL)
    _running(daemon, 1, not_pid=first["pid"])
    _, fams = scrape(daemon)
    assert value(fams, "swarmd_backend_restarts_total", **b1) == 1
    assert value(fams, "swarmd_backend_starts_total", **b1) == 2
    assert value(fams, "swarmd_backend_last_exit_signal", **b1) == signal.SIGKILL
    assert samples(fams, "swarmd_backend_last_exit_code", **b1) == []  # it did not exit by itself
    assert value(fams, "swarmd_backend_start_to_ready_seconds_count", **b1) == 2
    assert value(fams, "swarmd_backend_restarts_total", **b0) == 0

    # FreeBackendMemory: backend 0 has a hook (ok), backend 1 none (failed).
    assert daemon.ok("FreeBackendMemory", {"backend": "all"}) == {"result": True, "count": 1}
    wait_until(lambda: any(m["message"] == "freed" for m in daemon.ok(
        "ListRecentLogMessages", {"types": ["backend-0"]})["data"]["backend-0"]), what="the hook's line")
    _, fams = scrape(daemon)
    assert value(fams, "swarmd_backend_free_memory_calls_total", **b0, result="ok") == 1
    assert value(fams, "swarmd_backend_free_memory_calls_total", **b0, result="failed") == 0
    assert value(fams, "swarmd_backend_free_memory_calls_total", **b1, result="failed") == 1
    assert value(fams, "swarmd_backend_output_lines_total", **b0) == 4
    assert value(fams, "swarmd_api_requests_total", route="FreeBackendMemory", result="ok") == 1
    assert value(fams, "swarmd_api_requests_total", route="ListBackends", result="ok") >= 2
    assert value(fams, "swarmd_api_requests_total", route="metrics", result="ok") == 2  # this one not yet


def test_writes_refusals_reloads_and_api_errors_are_counted(start_daemon):
    daemon = start_daemon({0: {"settings": {"command": SLEEPER}}})
    _, fams = scrape(daemon)
    assert value(fams, "swarmd_file_writes_total") == 0
    assert value(fams, "swarmd_mutations_refused_total") == 0
    daemon.ok("AddNewBackend", {"type_id": "process", "title": "new"})
    assert "error" in daemon.api("EditBackend", {"backend_id": 0, "title": "x", "settings": {"no_such": 1}})
    assert daemon.call("NoSuchRoute").status_code == 400
    # A hand edit that breaks the file, then one that fixes it.
    good = daemon.file_bytes()
    daemon.backends.write_text("backends: [not, a, mapping\n")
    wait_until(lambda: daemon.ok("GetDaemonStatus")["file_problem"], what="the broken file noticed")
    _, fams = scrape(daemon)
    assert value(fams, "swarmd_backends_file_valid") == 0
    assert value(fams, "swarmd_reloads_failed_total") >= 1
    daemon.backends.write_bytes(good.replace(b"title: new", b"title: renamed"))
    wait_until(lambda: daemon.backend(1)["title"] == "renamed", what="the fixed file applied")
    _, fams = scrape(daemon)
    assert value(fams, "swarmd_backends_file_valid") == 1
    assert value(fams, "swarmd_reloads_total") >= 1
    assert value(fams, "swarmd_file_writes_total") == 1
    assert value(fams, "swarmd_mutations_refused_total") == 1
    assert value(fams, "swarmd_api_requests_total", route="EditBackend", result="error") == 1
    assert value(fams, "swarmd_api_requests_total", route="unknown", result="bad_route") == 1
    # Deleted: its series vanish (the collector reads the fleet at scrape time).
    daemon.ok("DeleteBackend", {"backend_id": 1})
    _, fams = scrape(daemon)
    assert samples(fams, "swarmd_backend_up", id="1") == []
    assert len(samples(fams, "swarmd_backend_up")) == 1


@pytest.mark.skipif(os.getuid() != 0 or nobody_python() is None, reason="needs root, setpriv and a python "
                    "uid 65534 can run")
def test_metrics_on_the_socket_need_the_resource_panel_permission():
    """A poweruser (no read_server_info_panels) is refused; the daemon's own user (owner) is served."""
    config = 'socket:\n  mode: "0666"\naccess:\n  - {uid: 65534, role: poweruser}\n'
    probe = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
             "s.sendall(b'GET /metrics HTTP/1.0\\r\\nHost: swarmd\\r\\n\\r\\n'); "
             "print(s.makefile('rb').readline().decode().strip())")
    with daemon_with_config(f"backends:\n  0:\n    type: process\n    settings:\n      command: {SLEEPER!r}\n",
                            config) as daemon:
        as_nobody = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                                    nobody_python(), "-I", "-c", probe, str(daemon.socket)],
                                   capture_output=True, text=True, cwd="/", timeout=30)
        assert as_nobody.stdout.split()[1:2] == ["403"], (as_nobody.stdout, as_nobody.stderr)
        scrape(daemon)  # root: owner


def test_the_http_listener_is_read_only(start_daemon, tmp_path):
    daemon, base = start_with_listener(start_daemon, tmp_path, {0: {"title": "keep me",
                                                                    "settings": {"command": SLEEPER}}})
    assert base.startswith("http://127.0.0.1:")
    before = daemon.file_bytes()
    body = {"backend_id": 0, "enabled": False, "type_id": "process", "title": "x", "settings": {}}
    methods = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
    with httpx.Client(base_url=base, timeout=30) as client:
        for route in ROUTES.values():
            for path in (f"/API/{route.name}", f"/api/{route.name.lower()}"):
                for method in methods:
                    answer = client.request(method, path, json=body)
                    assert answer.status_code == 403, (method, path, answer.status_code, answer.text)
        for path in ("/API", "/API/"):
            assert client.post(path, json=body).status_code == 403, path
        assert client.post("/Error/NoGetAPI", json=body).status_code == 405
        for path in ("/metrics", "/healthz", "/", "/status.json", "/nothing"):
            for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
                answer = client.request(method, path, content=b"x" * 100)
                assert answer.status_code == 405, (method, path, answer.status_code)
                assert answer.headers["allow"] == "GET, HEAD"
            answer = client.post(path, content=b"x" * (1 << 20))  # a body: read, dropped, refused
            assert answer.status_code == 405
        # What it serves, it serves to GET and HEAD (HEAD: the same headers, no body).
        for path, kind in (("/metrics", "text/plain; version=0.0.4"), ("/healthz", "text/plain"),
                           ("/", "text/html"), ("/status.json", "application/json")):
            got, head = client.get(path), client.head(path)
            assert got.status_code == head.status_code == 200, path
            assert got.headers["content-type"].startswith(kind), got.headers
            assert head.content == b"" and int(head.headers["content-length"]) > 0
            if path in ("/", "/healthz"):  # the others change between two requests (counters, times)
                assert head.headers["content-length"] == str(len(got.content))
        assert client.get("/nothing").status_code == 404
    # Nothing changed: the backend is there, untouched, and so is the file.
    assert daemon.backend(0)["title"] == "keep me" and daemon.backend(0)["enabled"] is True
    assert daemon.file_bytes() == before
    _, fams = scrape(daemon)
    assert value(fams, "swarmd_http_requests_total", path="/API/", code="403") == len(ROUTES) * 14 + 2
    assert samples(fams, "swarmd_http_requests_total", path="other")


def test_the_http_listener_serves_metrics_and_the_status_json(start_daemon, tmp_path):
    daemon, base = start_with_listener(start_daemon, tmp_path, {
        0: {"title": NASTY_TITLE, "settings": {"command": FREEABLE}}})
    _running(daemon, 0)
    wait_until(lambda: web_get(base, "/status.json?logs=0").json()["logs"]["lines"], what="lines")
    answer = web_get(base, "/status.json", params={"logs": "0", "lines": "2"}).json()
    (row,) = answer["backends"]
    assert row["title"] == NASTY_TITLE and row["status"] == "running" and row["restarts"] == 0
    assert 0 <= row["uptime"] < 60 and row["last_exit"] is None
    assert [line["text"] for line in answer["logs"]["lines"]] == ["two", "three"]
    assert answer["counts"] == {"running": 1}
    assert web_get(base, "/status.json", params={"logs": "7"}).json()["logs"] == {"id": 7, "lines": None}
    assert web_get(base, "/healthz").text == "ok\n"
    metrics = web_get(base, "/metrics")
    assert metrics.status_code == 200 and "swarmd_backend_up{" in metrics.text


def test_a_port_alone_listens_on_loopback_and_a_taken_port_stops_the_start(start_daemon, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "swarmd.yaml"
        config.write_text(f"http_listen: {port}\n")
        with pytest.raises(AssertionError, match=f"cannot listen on http_listen 127.0.0.1:{port}"):
            start_daemon({0: {"settings": {"command": SLEEPER}}}, extra_args=("--config", str(config)))
    daemon, base = start_with_listener(start_daemon, tmp_path, {0: {"settings": {"command": SLEEPER}}},
                                       listen="0")
    assert base.startswith("http://127.0.0.1:")
    assert web_get(base, "/healthz").status_code == 200
