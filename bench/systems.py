"""The three supervisors behind one small interface, each running the same benchmark children.

A `System` owns a run directory (config, sockets, FIFO, logs), writes its config for a set of programs
`{id: label}` (the label is the child's argv[1], what its start stamp carries), starts its daemon, answers
one status call with an in-process keep-alive client, applies an edited config the way its users do, and
kills everything it started when closed.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path
from typing import Any, ClassVar

from bench import procs
from bench.stamps import StampLog, write_child

BIN = Path(sys.executable).parent


def atomic_write(path: Path, text: str) -> None:
    """Write `text` into `path` like an editor that saves atomically: temp file, rename over."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class System:
    """One supervisor under test, with its own run directory."""

    name: ClassVar[str] = ""
    #: How often the daemon polls for dead children (0: it does not poll). The restart benchmark spreads
    #: its kills at random over this period, so that their phase against the poll does not bias the figure.
    poll_period: ClassVar[float] = 0.0

    def __init__(self, root: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=root))
        self.child = write_child(self.dir)
        self.stamps = StampLog(self.dir / "stamps.fifo")
        self.programs: dict[int, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    # -- what each system defines ------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        raise NotImplementedError

    def config_text(self) -> str:
        raise NotImplementedError

    def daemon_argv(self) -> list[str]:
        raise NotImplementedError

    def status(self) -> Any:
        """One status call over the kept-alive in-process client."""
        raise NotImplementedError

    def apply(self) -> None:
        """Make the daemon apply the config file just written (swarmd: nothing, it watches the file)."""

    def daemon_env(self) -> dict[str, str]:
        """The daemon's environment."""
        return _clean_env()

    def close_client(self) -> None:
        """Close the status client's connection."""

    # -- shared behaviour --------------------------------------------------------------------------
    def argv_for(self, label: str) -> list[str]:
        return [str(self.child), label, str(self.stamps.path)]

    def write_config(self) -> None:
        atomic_write(self.config_path, self.config_text())

    def start(self, programs: dict[int, str]) -> float:
        """Write the config and launch the daemon; returns the launch time (time.time())."""
        self.programs = dict(programs)
        self.write_config()
        log = open(self.dir / "daemon.log", "wb")  # noqa: SIM115 - lives as long as the daemon
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            self.daemon_argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.dir, start_new_session=True, env=self.daemon_env(),
        )
        log.close()
        return self.started_at

    def wait_api(self, timeout: float = 60.0) -> None:
        """Wait until a status call succeeds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.status()
                return
            except Exception:
                self.close_client()
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {self.log_tail()}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def labels(self) -> set[str]:
        return set(self.programs.values())

    def child_pids(self) -> list[int]:
        return self.stamps.pids(sorted(self.labels()))

    def helper_pids(self) -> list[int]:
        assert self.proc is not None
        return procs.helpers(self.proc.pid, str(self.child))

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join((self.dir / "daemon.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        """Kill everything this system started and stop reading stamps."""
        self.close_client()
        procs.kill_run(self.proc.pid if self.proc else None, self.dir)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.stamps.close()


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BASH_ENV", "ENV", "PYTHONSTARTUP")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 (keep-alive) over a unix socket."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Swarmd(System):
    """swarmd: backends YAML, hot reload on save, ListBackends over its unix socket.

    `src` (bench.run's --swarmd-src): run the swarmd of another checkout (its root goes first on the
    daemon's PYTHONPATH), e.g. the code before a change, for a before/after figure.
    """

    name = "swarmd"

    def __init__(self, root: Path, src: Path | None = None) -> None:
        super().__init__(root)
        self.socket = str(self.dir / "swarmd.sock")
        self.src = src
        self._conn: _UnixHTTPConnection | None = None

    def daemon_env(self) -> dict[str, str]:
        return swarmd_env(self.src)

    @property
    def config_path(self) -> Path:
        return self.dir / "backends.yaml"

    def config_text(self) -> str:
        lines = ["backends:"]
        for ident, label in sorted(self.programs.items()):
            command = " ".join(self.argv_for(label))
            lines += [
                f"  {ident}:", "    type: process", f"    title: p{ident}", "    enabled: true",
                "    settings:", f"      command: {command}", "      restart: always",
                "      restart_delay: 0", "      ready_check: none", "      start_limit_burst: 1000000",
                "      start_limit_interval: 1", "      stop_timeout: 10",
            ]
        return "\n".join(lines) + "\n"

    def daemon_argv(self) -> list[str]:
        return [sys.executable, "-m", "swarmd", "serve", "--backends", str(self.config_path),
                "--socket", self.socket]

    def status(self, full_data: bool = True) -> Any:
        """ListBackends; `full_data` adds pid, restarts, settings (what getAllProcessInfo gives)."""
        return self.call("ListBackends", {"full_data": True} if full_data else {})

    def connect(self) -> _UnixHTTPConnection:
        """A new keep-alive connection of its own (for a second client, e.g. in another thread)."""
        return _UnixHTTPConnection(self.socket)

    def call(self, route: str, body: dict[str, Any], conn: _UnixHTTPConnection | None = None) -> Any:
        """POST /API/`route` over `conn` (default: the kept-alive client); the parsed answer. An HTTP error
        or a SwarmUI-style `{"error": ...}` answer raises RuntimeError."""
        if conn is None:
            if self._conn is None:
                self._conn = self.connect()
            conn = self._conn
        conn.request("POST", f"/API/{route}", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{route}: HTTP {response.status}: {data[:200]!r}")
        answer = json.loads(data)
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"{route}: {answer['error']}")
        return answer

    def close_client(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def swarmd_env(src: Path | None) -> dict[str, str]:
    """The environment swarmd runs in: `src` (a checkout's root) first on PYTHONPATH when given."""
    env = _clean_env()
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH", "")) if p)
    return env


def swarmd_source(src: Path | None) -> str:
    """Which swarmd code the daemon runs: its package directory and that checkout's commit (+ whether the
    package has uncommitted changes), asked of the same interpreter and environment as the daemon."""
    try:
        where = subprocess.run(
            [sys.executable, "-c", "import os, swarmd; print(os.path.dirname(swarmd.__file__))"],
            env=swarmd_env(src), cwd="/", capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        return f"swarmd code: unknown ({err})"
    try:
        git = ["git", "-C", where]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"swarmd code: {where} (not a git checkout)"
    return f"swarmd code: {where} (commit {commit}{' + uncommitted changes' if dirty else ', clean'})"


class Supervisord(System):
    """supervisord 4: one ini file, XML-RPC over its unix socket, `update` applied in-process."""

    name = "supervisord"
    poll_period = 1.0  # its main loop wakes at least once a second

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.socket = str(self.dir / "supervisor.sock")
        self._proxy: Any = None

    @property
    def config_path(self) -> Path:
        return self.dir / "supervisord.conf"

    def config_text(self) -> str:
        d = self.dir
        text = (
            f"[unix_http_server]\nfile={self.socket}\n\n"
            f"[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\n"
            f"childlogdir={d}\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl=unix://{self.socket}\n"
        )
        for ident, label in sorted(self.programs.items()):
            text += (
                f"\n[program:p{ident}]\ncommand={' '.join(self.argv_for(label))}\nautostart=true\n"
                "autorestart=true\nstartsecs=0\nstartretries=1000000\nstopwaitsecs=10\n"
                "stdout_logfile=NONE\nstderr_logfile=NONE\n"
            )
        return text

    def daemon_argv(self) -> list[str]:
        return [str(BIN / "supervisord"), "-c", str(self.config_path)]

    def _rpc(self) -> Any:
        if self._proxy is None:
            from supervisor.xmlrpc import SupervisorTransport

            transport = SupervisorTransport(None, None, f"unix://{self.socket}")
            self._proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        return self._proxy

    def status(self) -> Any:
        return self._rpc().supervisor.getAllProcessInfo()

    def apply(self) -> None:
        """What `supervisorctl update` does (reloadConfig, then stop/remove/add groups), in-process."""
        rpc = self._rpc().supervisor
        added, changed, removed = rpc.reloadConfig()[0]
        for group in removed + changed:
            rpc.stopProcessGroup(group)
            rpc.removeProcessGroup(group)
        for group in changed + added:
            rpc.addProcessGroup(group)

    def close_client(self) -> None:
        if self._proxy is not None:
            self._proxy("close")()
            self._proxy = None


class Circus(System):
    """circus 0.19: one ini file, the circus client over ZeroMQ ipc, `reloadconfig` in-process."""

    name = "circus"
    poll_period = 5.0  # respawns happen in manage_watchers, every check_delay (5 s by default)

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.endpoint = f"ipc://{self.dir}/circus.sock"
        self._client: Any = None

    @property
    def config_path(self) -> Path:
        return self.dir / "circus.ini"

    def config_text(self) -> str:
        # multicast_endpoint empty: no UDP socket on all interfaces; no stats_endpoint: no circusd-stats.
        text = (
            f"[circus]\nendpoint = {self.endpoint}\npubsub_endpoint = ipc://{self.dir}/circus-pub.sock\n"
            "multicast_endpoint =\nstatsd = false\n"
        )
        for ident, label in sorted(self.programs.items()):
            _cmd, *args = self.argv_for(label)
            text += (
                f"\n[watcher:p{ident}]\ncmd = {self.child}\nargs = {' '.join(args)}\nnumprocesses = 1\n"
                "warmup_delay = 0\ngraceful_timeout = 10\nrespawn = true\ncopy_env = true\n"
            )
        return text

    def daemon_argv(self) -> list[str]:
        return [str(BIN / "circusd"), str(self.config_path)]

    def _call(self, command: str, **properties: Any) -> Any:
        if self._client is None:
            from circus.client import CircusClient

            self._client = CircusClient(endpoint=self.endpoint, timeout=60)
        answer = self._client.call({"command": command, "properties": properties})
        if answer.get("status") != "ok":
            raise RuntimeError(f"circus {command}: {answer}")
        return answer

    def status(self) -> Any:
        return self._call("status")

    def apply(self) -> None:
        self._call("reloadconfig")

    def close_client(self) -> None:
        if self._client is not None:
            self._client.stop()
            self._client = None


SYSTEMS: list[type[System]] = [Swarmd, Supervisord, Circus]
