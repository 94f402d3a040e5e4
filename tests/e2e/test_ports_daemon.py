"""Issue #13 against a real daemon: a fixed port that another process holds is never readiness, and says who
holds it at the first start; ComfyUI's --listen in ExtraArgs is the operator's, its --port is refused, and
a ComfyUI in its own venv runs with that venv first on PATH."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Daemon, backend_yaml, wait_until

PY = sys.executable
FAKE_COMFY = Path(__file__).resolve().parents[1] / "fake_comfyui" / "main.py"
PORT_REFUSED = "--port is set by swarmd (the port setting sets the port)"

#: A plain listening socket that never accepts (the kernel still completes TCP handshakes: a tcp readiness
#: check "succeeds" against it; an http one hangs).
SILENT = ("import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
          "print(s.getsockname()[1], flush=True); time.sleep(600)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listens(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def holder(kind: str) -> Iterator[tuple[subprocess.Popen[str], int, str]]:
    """A process of the test's that holds a port: (the process, the port, how its command line starts)."""
    if kind == "silent socket":
        proc = subprocess.Popen([PY, "-c", SILENT], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        shown = f"{PY} -c import socket, time;"
    else:  # "http server": answers 200 to GET /
        port = free_port()
        proc = subprocess.Popen([PY, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: listens(port), what="the http server listening")
        shown = f"{PY} -m http.server --bind 127.0.0.1 {port}"
    try:
        yield proc, port, shown
    finally:
        proc.kill()
        proc.wait()


def sample(daemon: Daemon, backend_id: int, seconds: float) -> list[tuple[float, dict]]:
    """(seconds since the first sample, the backend as ListBackends shows it), every ~10 ms for `seconds`."""
    seen = []
    began = time.monotonic()
    while (now := time.monotonic() - began) < seconds:
        seen.append((now, daemon.backend(backend_id)))
        time.sleep(0.01)
    return seen


@pytest.mark.parametrize("kind, check", [("silent socket", "tcp"), ("http server", "http")])
def test_a_fixed_port_held_by_another_process_is_never_running(start_daemon, kind, check):
    """Needs the shell's wiring of `ports.owner` before each fixed-port start (see the issue #13 report)."""
    with holder(kind) as (other, port, shown):
        ready_check = "tcp" if check == "tcp" else "http://127.0.0.1:{port}/"
        daemon = start_daemon({0: {"title": "web", "settings": {
            "command": f"{PY} -m http.server --bind 127.0.0.1 {{port}}", "port": port,
            "ready_check": ready_check, "stable_after": 0.5}}})
        seen = sample(daemon, 0, 3.0)
        statuses = {entry["status"] for _, entry in seen}
        assert statuses <= {"waiting", "errored"}, statuses  # never a false `running`
        said = f"port {port} is in use by pid {other.pid} ({shown}"
        first = next((at for at, entry in seen if said in entry["status_message"]), None)
        assert first is not None, [entry["status_message"] for _, entry in seen[-3:]]
        assert first < 1.5  # said by the first start, not after 45 s and 5 boots
        assert all(entry["pid"] is None for _, entry in seen)  # no start was wasted on a child
    # The port is free again: the backend starts and is running (its own socket counts as readiness).
    wait_until(lambda: not listens(port), what="the port free")
    assert daemon.ok("RestartBackends", {"backend": "0"})
    listing = wait_until(lambda: (b := daemon.backend(0))["status"] == "running" and b, timeout=20,
                         what="running on its own port")
    assert listing["port"] == port and listing["pid"] is not None


def comfy_stats(port: int) -> dict:
    url = f"http://127.0.0.1:{port}/system_stats"
    return json.loads(urllib.request.urlopen(url, timeout=5).read())["system"]


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_comfyui_listen_in_extra_args_wins_and_port_is_refused(start_daemon, tmp_path):
    # A ComfyUI in its own venv (as SwarmUI installs it): main.py beside venv/bin/python3.
    comfy_dir = tmp_path / "ComfyUI"
    (comfy_dir / "venv" / "bin").mkdir(parents=True)
    shutil.copy(FAKE_COMFY, comfy_dir / "main.py")
    (comfy_dir / "venv" / "bin" / "python3").symlink_to(PY)
    daemon = start_daemon({
        0: {"type": "comfyui_selfstart", "settings": {"StartScript": str(FAKE_COMFY), "python": PY,
                                                      "ExtraArgs": "--listen 0.0.0.0 --lowvram"}},
        1: {"type": "comfyui_selfstart", "settings": {"StartScript": str(FAKE_COMFY), "python": PY,
                                                      "ExtraArgs": "--listen"}},
        2: {"type": "comfyui_selfstart", "settings": {"StartScript": str(comfy_dir / "main.py")}},
    })
    listings = {i: wait_until(lambda i=i: (b := daemon.backend(i))["status"] == "running" and b, timeout=60,
                              what=f"comfy {i} running") for i in range(3)}
    # --listen in ExtraArgs is ComfyUI's address: no second --listen; readiness was checked at 127.0.0.1
    port = listings[0]["port"]
    stats = comfy_stats(port)
    assert stats["argv"][1:] == ["--listen", "0.0.0.0", "--lowvram", "--preview-method", "auto", "--port",
                                 str(port)]
    assert stats["listen"] == "0.0.0.0"
    port = listings[1]["port"]
    stats = comfy_stats(port)  # a bare --listen: every address
    assert stats["argv"][1:] == ["--listen", "--preview-method", "auto", "--port", str(port)]
    assert stats["listen"] == "0.0.0.0"
    # No --listen: swarmd's own, as before; the script's venv comes first on PATH
    port, pid = listings[2]["port"], listings[2]["pid"]
    stats = comfy_stats(port)
    assert stats["argv"][1:] == ["--listen", "127.0.0.1", "--preview-method", "auto", "--port", str(port)]
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == str(comfy_dir / "venv/bin/python3").encode()
    assert environ(pid)["PATH"] == f"{comfy_dir / 'venv' / 'bin'}:{os.environ['PATH']}"

    # --port in ExtraArgs is refused, over the API and in the file, and changes nothing
    before = daemon.file_bytes()
    for extra in ("--port 8188", "--lowvram --port=8188"):
        refused = daemon.api("EditBackend", {"backend_id": 0, "title": "b0", "settings": {"ExtraArgs": extra}})
        assert PORT_REFUSED in refused["error"] and "ExtraArgs" in refused["error"], refused
    assert daemon.file_bytes() == before and daemon.backend(0)["pid"] == listings[0]["pid"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(backend_yaml({0: {"type": "comfyui_selfstart", "settings": {"ExtraArgs": "--port 8188"}}}))
    check = subprocess.run([PY, "-m", "swarmd", "check", "--backends", str(bad)], capture_output=True,
                           text=True)
    assert check.returncode == 1
    assert f"settings.ExtraArgs: {PORT_REFUSED}" in check.stdout + check.stderr
