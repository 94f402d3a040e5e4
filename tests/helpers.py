"""The tests' one harness: a real daemon and its API client, the one way to wait, and processes by argv.

* `Daemon` runs `python -m swarmd serve` in a directory (a test's tmp_path, or a fresh 0755 directory under
  /tmp that other users may reach) with its log in a file, and is the API client of its socket.
* `Api` is that client alone (httpx over the unix socket), for a socket no `Daemon` started.
* `wait_until` (sync) and `eventually` (async, for in-process Fleets) are the only helpers that poll.
* `pids_with_arg` finds processes by one exact argument of their argv, never by a substring of the
  command line (a `sh -c` whose text names a marker is not the process that carries it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parents[1]

# -- waiting ---------------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy, and return that. Fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.01)


async def eventually(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> Any:
    """`wait_until` for a test that runs a Fleet on its own trio loop (tests may poll; the daemon never does)."""
    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


# -- processes -------------------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rss_bytes(pid: int) -> int:
    """The resident set size of process `pid` (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def pids_with_arg(arg: str) -> list[int]:
    """Live (non-zombie) processes that have `arg` as one whole element of their argv (not a shell whose
    -c text merely names it), this test process left out."""
    wanted = arg.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if wanted in argv and alive(int(entry)):
            found.append(int(entry))
    return found


# -- backends files ----------------------------------------------------------------------------------------

#: A child that just stays up.
SLEEPER = 'python3 -c "import time; time.sleep(600)"'
#: A child that prints "tick N" five times a second.
TICKER = "python3 -u -c \"import time\nfor i in range(100000): print('tick', i, flush=True); time.sleep(0.2)\""

#: The API tests' fleet (tests/api): a sleeper and a ticker, with comments every mutation must keep.
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


def backend_yaml(backends: dict[int, dict]) -> str:
    """A backends file for the given {id: {"title":.., "settings": {..}, "enabled":..}}."""
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


def public_dir() -> Path:
    """A fresh directory under /tmp that every user may traverse (0755): the access tests connect to a
    socket in it as uid 65534. The caller removes it (`Daemon.finish` does for the daemon's own)."""
    directory = Path(tempfile.mkdtemp(prefix="swarmd-test-", dir="/tmp"))
    os.chmod(directory, 0o755)
    return directory


# -- the API client and the daemon ----------------------------------------------------------------------------


_NO_TLS: list[ssl.SSLContext] = []


class Api:
    """The tests' one API client: POST /API/<route> over a unix socket with httpx, a fresh connection per
    call."""

    def __init__(self, socket_path: str | os.PathLike[str]) -> None:
        self.socket = Path(socket_path)

    def client(self, timeout: float = 30.0, **kwargs: Any) -> httpx.Client:
        """An httpx client on the socket, for raw requests (other methods, headers, bodies, keep-alive)."""
        if not _NO_TLS:  # httpx builds an SSL context per transport (~40 ms) unless given one: share one
            _NO_TLS.append(ssl.create_default_context())
        transport = httpx.HTTPTransport(uds=str(self.socket), verify=_NO_TLS[0])
        return httpx.Client(transport=transport, base_url="http://swarmd", timeout=timeout, **kwargs)

    def call(self, route: str, body: Any = None, *, headers: dict[str, str] | None = None,
             timeout: float = 30.0) -> httpx.Response:
        """POST /API/<route> with `body` as JSON (ASCII, so a lone surrogate travels as its \\u escape); the
        response, whatever its status."""
        content = json.dumps({} if body is None else body).encode()
        with self.client(timeout) as client:
            return client.post(f"/API/{route}", content=content,
                               headers={"Content-Type": "application/json", **(headers or {})})

    def api(self, route: str, body: Any = None, *, timeout: float = 30.0) -> Any:
        """The decoded JSON answer, errors included."""
        return self.call(route, body, timeout=timeout).json()

    def ok(self, route: str, body: Any = None, *, timeout: float = 30.0) -> Any:
        """The decoded answer of a call that must succeed: HTTP 200 and no "error"."""
        response = self.call(route, body, timeout=timeout)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert "error" not in answer, answer
        return answer

    def backend(self, backend_id: int) -> dict[str, Any] | None:
        """Backend `backend_id` as ListBackends with full_data shows it; None when there is none."""
        return self.ok("ListBackends", {"full_data": True}).get(str(backend_id))

    def connects(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True


class Daemon(Api):
    """A real `swarmd serve` in a subprocess: `python -m swarmd serve --backends B --socket S [extra_args]`
    run in `directory`, its stdout and stderr in `log_path` (or `stdout=`, e.g. a pipe nobody reads).

    `directory` None: a fresh 0755 directory under /tmp (`public_dir`), removed by `finish`. The backends
    file is `directory`/backends.yaml (written from `backends_text` when given) unless `backends_path` names
    another. The constructor returns once the socket accepts connections, and fails with the log if the
    daemon exits first. `module` is what `python -m` runs (a subclass may run swarmd behind a test seam).
    """

    module = "swarmd"

    def __init__(self, directory: str | os.PathLike[str] | None = None, backends_text: str | None = None, *,
                 backends_path: str | os.PathLike[str] | None = None, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, stdout: Any = None, preexec_fn: Callable[[], Any] | None = None,
                 listen_timeout: float = 30.0) -> None:
        self.owns_directory = directory is None
        self.directory = public_dir() if directory is None else Path(directory)
        super().__init__(self.directory / "swarmd.sock")
        self.backends = Path(backends_path) if backends_path is not None else self.directory / "backends.yaml"
        if backends_text is not None:
            self.backends.write_text(backends_text)
        self.log_path = self.directory / "swarmd.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "serve", "--backends", str(self.backends),
             "--socket", str(self.socket), *extra_args],
            stdout=self._log if stdout is None else stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.directory, env=env, preexec_fn=preexec_fn)
        try:
            wait_until(self._listening, listen_timeout, what=f"swarmd listening on {self.socket}")
        except BaseException:
            self.kill()
            if self.owns_directory:
                shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"swarmd exited with {self.proc.returncode} before listening:\n{self.log()}")
        return self.connects()

    # -- the files it owns --

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 30.0, count: int = 1) -> list:
        """The regex `pattern`'s matches (re.findall) once the log holds `count` of them."""
        def found() -> list | None:
            exited = self.proc.poll() is not None  # read before the log: a last line is not missed
            matches = re.findall(pattern, self.log())
            if len(matches) >= count:
                return matches
            if exited:
                raise AssertionError(f"swarmd exited ({self.proc.returncode}) before {pattern!r}:\n{self.log()}")
            return None

        return wait_until(found, timeout, what=f"{pattern!r} in the daemon's log")

    def file_bytes(self) -> bytes:
        return self.backends.read_bytes()

    def file_is_valid(self) -> Any:
        """The backends file parsed and validated (raises FileInvalid otherwise)."""
        from swarmd import backends_file

        return backends_file.parse(str(self.backends), self.file_bytes())

    # -- ending it --

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send `sig` (unless it has exited) and return its exit status; SIGKILL and fail if it takes longer
        than `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"swarmd did not exit within {timeout} s of signal {sig}:\n{self.log()}") from None
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL (unless it has exited) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()

    def finish(self) -> None:
        """Stop it and check that it stopped cleanly: exit 0, socket removed, no traceback in its log; then
        remove the directory if the daemon made it."""
        try:
            status = self.stop()
            log = self.log()
            assert status == 0, log
            assert not self.socket.exists(), "the socket was left behind"
            assert "Traceback" not in log, log
        finally:
            if self.owns_directory:
                shutil.rmtree(self.directory, ignore_errors=True)


# -- machines ---------------------------------------------------------------------------------------------

_machine_gpus: list[Any] = []


def machine_gpus() -> list[Any]:
    """This machine's GPUs as NVML reports them ([] without a driver): what a daemon in a subprocess sees,
    read without touching the inventory of this test process (swarmd.gpu's module state)."""
    if not _machine_gpus:
        from swarmd import gpu

        inventory = gpu.NvmlInventory()
        _machine_gpus.append(inventory.gpus() if inventory.available else [])
    return _machine_gpus[0]


# -- in-process Fleets -----------------------------------------------------------------------------------------


def status(fleet, backend_id: int) -> str:
    backend = fleet.get(backend_id)
    return backend.status if backend else "gone"


async def running(fleet, backend_id: int) -> int:
    await eventually(lambda: status(fleet, backend_id) == "running", what=f"backend {backend_id} running")
    pid = fleet.get(backend_id).pid
    assert pid is not None
    return pid


# -- another user: uid 65534 ---------------------------------------------------------------------------------

NOBODY = 65534
_nobody_python: list[str] = []


def nobody_python() -> str | None:
    """An interpreter uid 65534 can run: this one when the checkout's path lets other users in, else the
    system's python3 (CI may clone into a directory only root can enter). None when there is none."""
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
    setpriv = shutil.which("setpriv")
    return bool(setpriv) and subprocess.run(
        [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", sys.executable, "-c",
         "import swarmd.api.server"], cwd="/", capture_output=True).returncode == 0


def nobody_ctl_argv() -> list[str]:
    """argv prefix that runs swarmctl as uid/gid 65534 without groups. swarmctl is stdlib only, so a
    world-readable copy of swarmd/ctl.py runs under any python3 that user can execute."""
    python = nobody_python()
    if python is None:
        raise AssertionError("no python3 that uid 65534 can run (need setpriv and /usr/bin/python3)")
    directory = tempfile.mkdtemp(prefix="swarmd-ctl-")
    os.chmod(directory, 0o755)
    script = Path(directory) / "swarmctl.py"
    shutil.copy(ROOT / "swarmd" / "ctl.py", script)
    os.chmod(script, 0o644)
    return [shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "--", python, "-I", str(script)]


#: A daemon config that gives uid 65534 (nobody) the poweruser role, on a socket anyone may connect to.
NOBODY_POWERUSER_CONFIG = """\
socket:
  mode: "0666"
access:
  - {uid: 65534, role: poweruser}
"""


@contextlib.contextmanager
def daemon_with_config(backends_text: str, config_text: str) -> Iterator[Daemon]:
    """A Daemon started with `--config` holding `config_text` (in /tmp, where uid 65534 may read it);
    stopped and checked (`finish`) on exit."""
    config = os.path.join("/tmp", f"swarmd-config-{os.getpid()}-{secrets.token_hex(4)}.yaml")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(config_text)
    try:
        running = Daemon(backends_text=backends_text, extra_args=("--config", config))
        yield running
        running.finish()
    finally:
        os.unlink(config)
