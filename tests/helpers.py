"""Shared test helpers: wait for a condition, find processes by a marker in their command line."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import trio


async def eventually(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    """Poll `predicate` until it returns something truthy (tests may poll; the daemon never does)."""
    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


def pids_with_arg(arg: str) -> list[int]:
    """Live (non-zombie) processes with `arg` as one whole argument (not a shell whose -c text names it)."""
    found = []
    for pid in pids_with(arg):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if arg.encode() in handle.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            continue
    return found


def pids_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z" and int(entry) != os.getpid():
            found.append(int(entry))
    return found


def backend_yaml(backends: dict[int, dict]) -> str:
    """A backends file for the given {id: {"title":.., "settings": {..}, "enabled":..}}."""
    import json

    lines = ["backends:"]
    for backend_id, spec in backends.items():
        lines.append(f"  {backend_id}:")
        lines.append(f"    type: {spec.get('type', 'process')}")
        lines.append(f"    title: {json.dumps(spec.get('title', f'b{backend_id}'))}")
        lines.append(f"    enabled: {str(spec.get('enabled', True)).lower()}")
        lines.append("    settings:")
        for key, value in spec.get("settings", {}).items():
            lines.append(f"      {key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


class Daemon:
    """A real `swarmd serve` in a subprocess, its stderr collected in a file."""

    def __init__(self, tmp_path, backends_text: str | None = None, *, extra_args: tuple[str, ...] = (),
                 preexec_fn=None, backends_path=None, env=None) -> None:
        import subprocess
        import sys

        self.dir = tmp_path
        self.backends = backends_path or tmp_path / "backends.yaml"
        if backends_text is not None:
            self.backends.write_text(backends_text)
        self.socket = tmp_path / "swarmd.sock"
        self.log_path = tmp_path / "swarmd.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "swarmd", "serve", "--backends", str(self.backends),
             "--socket", str(self.socket), *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn, env=env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 30.0, count: int = 1) -> list:
        import re

        def found():
            matches = re.findall(pattern, self.log())
            if self.proc.poll() is not None and len(matches) < count:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before {pattern!r}:\n{self.log()}")
            return matches if len(matches) >= count else None

        return wait_until(found, timeout, what=f"{pattern!r} in the daemon's log")  # type: ignore[return-value]

    def stop(self, sig: int = 15, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()


def api(socket_path, route: str, body: dict | None = None, timeout: float = 30.0) -> dict:
    """POST /API/<route> over the daemon's unix socket (stdlib only) and return the JSON answer."""
    import http.client
    import json
    import socket

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(str(socket_path))

    connection = UnixConnection("swarmd", timeout=timeout)
    try:
        connection.request("POST", f"/API/{route}", json.dumps(body or {}),
                           {"Content-Type": "application/json"})
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def wait_socket(socket_path, timeout: float = 30.0) -> None:
    import socket

    def connects() -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(socket_path))
            return True
        except OSError:
            return False

    wait_until(connects, timeout, what=f"{socket_path} accepting connections")


def status(fleet, backend_id: int) -> str:
    backend = fleet.get(backend_id)
    return backend.status if backend else "gone"


async def running(fleet, backend_id: int) -> int:
    await eventually(lambda: status(fleet, backend_id) == "running", what=f"backend {backend_id} running")
    pid = fleet.get(backend_id).runtime.pid
    assert pid is not None
    return pid


NOBODY = 65534
_nobody_python: list[str] = []


def nobody_python() -> str | None:
    """An interpreter uid 65534 can run: this one when the checkout's path lets other users in, else the
    system's python3 (CI may clone into a directory only root can enter). None when there is none."""
    import shutil
    import subprocess
    import sys

    if not _nobody_python:
        setpriv = shutil.which("setpriv")
        found = ""
        for candidate in (sys.executable, "/usr/bin/python3"):
            if setpriv and os.path.exists(candidate) and subprocess.run(
                    [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", candidate,
                     "-I", "-c", "pass"], cwd="/", capture_output=True).returncode == 0:
                found = candidate
                break
        _nobody_python.append(found)
    return _nobody_python[0] or None


def nobody_can_import_swarmd() -> bool:
    """Whether uid 65534 can run this interpreter *and* import swarmd from this checkout (not when CI
    clones into a directory closed to other users)."""
    import shutil
    import subprocess
    import sys

    setpriv = shutil.which("setpriv")
    return bool(setpriv) and subprocess.run(
        [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", sys.executable, "-c",
         "import swarmd.api.server"], cwd="/", capture_output=True).returncode == 0


def nobody_ctl_argv() -> list[str]:
    """argv prefix that runs swarmctl as uid/gid 65534 without groups. swarmctl is stdlib only, so a
    world-readable copy of swarmd/ctl.py runs under any python3 that user can execute."""
    import shutil
    import tempfile
    from pathlib import Path

    python = nobody_python()
    if python is None:
        raise AssertionError("no python3 that uid 65534 can run (need setpriv and /usr/bin/python3)")
    directory = tempfile.mkdtemp(prefix="swarmd-ctl-")
    os.chmod(directory, 0o755)
    script = Path(directory) / "swarmctl.py"
    shutil.copy(Path(__file__).resolve().parents[1] / "swarmd" / "ctl.py", script)
    os.chmod(script, 0o644)
    return [shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "--", python, "-I", str(script)]
