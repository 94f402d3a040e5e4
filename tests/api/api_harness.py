"""The API tests' harness: a real daemon (`python -m swarmd serve`) on a real socket with real children.

Each daemon gets its own directory under /tmp that every user may traverse (the access tests connect as
uid 65534). The fixtures are module-scoped where the tests can share a daemon: starting one costs ~0.5 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import httpx

from swarmd import backends_file

#: A child that just stays up.
SLEEPER = 'python3 -c "import time; time.sleep(600)"'
#: A child that prints "tick N" five times a second.
TICKER = "python3 -u -c \"import time\nfor i in range(100000): print('tick', i, flush=True); time.sleep(0.2)\""

DEFAULT_BACKENDS = f"""\
# The API tests' fleet. This comment must survive every mutation.
backends:
  0:
    type: process
    title: sleeper
    enabled: true
    settings:
      command: {json.dumps(SLEEPER)}
  1:
    type: process
    title: ticker  # a trailing comment
    enabled: true
    settings:
      command: {json.dumps(TICKER)}
"""


@dataclass
class Daemon:
    """A running `swarmd serve` and the files it owns."""

    proc: subprocess.Popen[bytes]
    directory: str
    socket: str
    backends: str
    log: str

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=self.socket), base_url="http://swarmd",
                            timeout=kwargs.pop("timeout", 30), **kwargs)

    def call(self, route: str, body: Any = None, *, headers: dict[str, str] | None = None) -> httpx.Response:
        """POST /API/<route> with `body` as JSON on a fresh connection."""
        with self.client() as client:
            return client.post(f"/API/{route}", json={} if body is None else body, headers=headers)

    def ok(self, route: str, body: Any = None) -> Any:
        """Call and insist on a successful SwarmUI answer; returns the decoded JSON."""
        response = self.call(route, body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert "error" not in answer, answer
        return answer

    def file_bytes(self) -> bytes:
        with open(self.backends, "rb") as handle:
            return handle.read()

    def file_is_valid(self) -> backends_file.BackendsFile:
        return backends_file.parse(self.backends, self.file_bytes())

    def log_text(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def wait_for(self, predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def backend(self, backend_id: int) -> dict[str, Any] | None:
        return self.ok("ListBackends", {"full_data": True}).get(str(backend_id))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_dir() -> str:
    """A fresh directory every user may traverse (0755), for the socket and the backends file."""
    directory = tempfile.mkdtemp(prefix="swarmd-api-", dir="/tmp")
    os.chmod(directory, 0o755)
    return directory


def wait_listening(path: str, proc: subprocess.Popen[bytes] | None, log: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            with open(log, encoding="utf-8", errors="replace") as handle:
                raise AssertionError(f"swarmd exited with {proc.returncode}:\n{handle.read()}")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"swarmd did not listen on {path} within {timeout} s") from None
            time.sleep(0.02)
        finally:
            probe.close()


def start_daemon(backends_text: str = DEFAULT_BACKENDS, extra_args: tuple[str, ...] = ()) -> Daemon:
    directory = make_dir()
    backends = os.path.join(directory, "backends.yaml")
    with open(backends, "w", encoding="utf-8") as handle:
        handle.write(backends_text)
    sock = os.path.join(directory, "swarmd.sock")
    log = os.path.join(directory, "swarmd.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "swarmd", "serve", "--backends", backends, "--socket", sock, *extra_args],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=directory,
        )
    daemon = Daemon(proc=proc, directory=directory, socket=sock, backends=backends, log=log)
    try:
        wait_listening(sock, proc, log)
    except BaseException:
        daemon.stop()
        raise
    return daemon


def finish_daemon(daemon: Daemon) -> None:
    """Stop it and check it stopped cleanly: exit 0, socket removed, no traceback in its log."""
    daemon.stop()
    log = daemon.log_text()
    try:
        assert daemon.proc.returncode == 0, log
        assert not os.path.exists(daemon.socket), "the socket was left behind"
        assert "Traceback" not in log, log
    finally:
        shutil.rmtree(daemon.directory, ignore_errors=True)
