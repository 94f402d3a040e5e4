"""Child processes: spawn in their own group, notice exit through pidfd, signal the group, never orphan.

Theory of operation
-------------------
* Spawning happens on the trio thread with `subprocess.Popen` and no preexec_fn, so CPython can use
  vfork/posix_spawn (fast at 1000 backends). Each child gets its own session (so its own process group),
  stdin from /dev/null, and stdout/stderr pipes that its shell reads chunk by chunk.
* Exit is noticed by waiting for the child's pidfd to become readable (~0.3 ms after death), then reaping
  it with a non-blocking waitpid. No polling anywhere.
* Nothing outlives the daemon. A `Guardian` -- one small helper process started at daemon start -- holds
  the read end of a pipe and the list of live process groups. When the pipe closes (the daemon exited or
  was SIGKILLed) it SIGKILLs every group it knows. Registration happens right after fork, synchronously.
* Stopping is a ladder -- `stop_signal` to the whole group, SIGKILL after `stop_timeout` -- decided by the
  backend's lifecycle (supervise/lifecycle.py) and carried out here with `kill_group`. Grandchildren left
  in the group after the leader exits are killed as the leader is reaped.
* Children get default signal dispositions: the daemon resets inherited SIG_IGN dispositions and the
  signal mask at start (`normalize_signals`), so nothing it inherited leaks into backends; caught signals
  are reset by exec anyway.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import trio

from swarmd.types import LaunchSpec

log = logging.getLogger("swarmd.process")

#: Environment variables of the daemon's own protocol with systemd: never passed to a backend.
PRIVATE_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC",
               "WATCHDOG_PID", "SWARMD_SOCKET")

MAX_LINE = 64 * 1024  # longer output lines are cut (a child printing binary junk must not eat memory)


@dataclass(frozen=True)
class ExitInfo:
    """How a process ended: `code` for a normal exit, `signal` when killed by one."""

    code: int | None
    signal: int | None = None

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitInfo:
        if returncode < 0:
            return cls(None, -returncode)
        return cls(returncode, None)

    @property
    def success(self) -> bool:
        return self.code == 0

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by {self.signal_name}"
        return f"exited with status {self.code}"

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return signal.Signals(self.signal).name
        except ValueError:  # real-time signals (SIGRTMIN+n) have no name of their own
            return f"signal {self.signal}"

    def to_api(self) -> dict[str, int | str | None]:
        return {"code": self.code, "signal": self.signal_name, "text": self.describe()}


def normalize_signals() -> None:
    """Reset inherited SIG_IGN dispositions (except SIGPIPE, which Popen restores in children) and unblock
    every signal, so that children start clean whatever the daemon inherited (e.g. `nohup`, `&`)."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGPIPE):
            continue
        try:
            if signal.getsignal(sig) == signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def raise_fd_limit() -> None:
    """Each backend holds a pidfd and two pipes: lift the soft fd limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the guardian ------------------------------------------------------------------------------------------

GUARDIAN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guardian.py")


class Guardian:
    """Kills every registered process group when the daemon goes away, however it goes.

    Owns one helper process and the write end of its stdin pipe. `register`/`unregister` are synchronous
    writes of a few bytes (the pipe never fills: the guardian reads continuously).
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._groups: set[int] = set()

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", GUARDIAN_SCRIPT],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # no terminal signal reaches it; it dies only when the pipe closes
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        for pgid in self._groups:
            self._send(f"+{pgid}\n")

    def ensure_alive(self) -> None:
        """Restart the guardian if someone killed it (its groups are registered again)."""
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:
                log.warning("the guardian process died (%s); starting a new one", self._proc.returncode)
            self.start()

    def register(self, pgid: int) -> None:
        self._groups.add(pgid)
        self._send(f"+{pgid}\n")

    def unregister(self, pgid: int) -> None:
        self._groups.discard(pgid)
        self._send(f"-{pgid}\n")

    def _send(self, line: str) -> None:
        if self._proc is None or self._proc.stdin is None:
            return
        try:
            os.write(self._proc.stdin.fileno(), line.encode())
        except (BrokenPipeError, OSError):
            self.ensure_alive()

    def close(self) -> None:
        """Stop the guardian after a clean shutdown (it then kills whatever is still registered)."""
        if self._proc is None:
            return
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None


# -- one child ---------------------------------------------------------------------------------------------


class Child:
    """One running process of a backend and its process group.

    Owns the Popen object, the pidfd and the output pipes. Created by `spawn()`.
    """

    def __init__(self, popen: subprocess.Popen[bytes], guardian: Guardian | None) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.pgid = popen.pid  # start_new_session: the child leads its own group
        self.exit: ExitInfo | None = None
        self._guardian = guardian
        self._pidfd = os.pidfd_open(self.pid)
        self._watching = False
        self._watcher_left = trio.Event()

    @property
    def running(self) -> bool:
        return self.exit is None

    async def wait(self) -> ExitInfo:
        """Wait for the leader to exit, reap it, and kill what is left of its group.

        Any number of tasks may wait: one of them watches the pidfd and the others wait for it; if the
        watcher is cancelled, another waiter takes over.
        """
        while self.exit is None:
            if self._watching:
                await self._watcher_left.wait()
                continue
            self._watching = True
            try:
                await trio.lowlevel.wait_readable(self._pidfd)
                self._reap()
            finally:
                self._watching = False
                left, self._watcher_left = self._watcher_left, trio.Event()
                left.set()
        return self.exit

    def _reap(self) -> None:
        returncode = self.popen.wait()  # the pidfd is readable: this does not block
        self.exit = ExitInfo.from_returncode(returncode)
        # Grandchildren may still hold the group (and the port, and GPU memory): they go with the leader.
        self.kill_group(signal.SIGKILL)
        if self._guardian is not None:
            self._guardian.unregister(self.pgid)
        os.close(self._pidfd)

    def kill_group(self, sig: int) -> bool:
        """Send `sig` to the whole process group. False when the group is already gone."""
        try:
            os.killpg(self.pgid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return False


def child_environment(spec: LaunchSpec) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
    for name in spec.unset_env:
        env.pop(name, None)
    env.update(spec.env)
    return env


def spawn(spec: LaunchSpec, guardian: Guardian | None) -> tuple[Child, int, int]:
    """Start the process described by `spec` in a new session.

    Returns the Child and the read ends of its stdout and stderr pipes (the caller reads and closes them).
    Raises OSError when the process cannot be started (missing executable, bad cwd, permission); the
    message names the program or directory.
    """
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        popen = subprocess.Popen(
            list(spec.argv), cwd=spec.cwd, env=child_environment(spec),
            stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
            start_new_session=True, close_fds=True, restore_signals=True,
        )
    except BaseException:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        raise
    os.close(out_w)
    os.close(err_w)
    if guardian is not None:
        guardian.register(popen.pid)
    return Child(popen, guardian), out_r, err_r


def describe_spawn_error(err: Exception, spec: LaunchSpec) -> str:
    """A message a person can act on for a start that failed before exec (from the error alone: the
    daemon does not go looking at paths a setting names)."""
    program = spec.argv[0] if spec.argv else "?"
    if not isinstance(err, OSError):
        return f"cannot start {program!r}: {err}"
    names_cwd = spec.cwd is not None and err.filename == spec.cwd
    if isinstance(err, FileNotFoundError) and names_cwd:
        return f"cannot start: working directory {spec.cwd!r} does not exist"
    if isinstance(err, NotADirectoryError) and names_cwd:
        return f"cannot start: working directory {spec.cwd!r} is not a directory"
    if isinstance(err, FileNotFoundError):
        return f"cannot start: program {program!r} not found"
    if isinstance(err, PermissionError):
        return f"cannot start {program!r}: permission denied ({err.filename or program})"
    return f"cannot start {program!r}: {os.strerror(err.errno) if err.errno else err}"


async def pump_chunks(fd: int, stream: str, on_output: Callable[[str, list[str]], None]) -> None:
    """Read `fd` until EOF, calling `on_output(stream, lines)` once per chunk read (the complete lines in it;
    a line longer than MAX_LINE is cut). Owns and closes `fd`."""
    os.set_blocking(fd, False)
    pipe = trio.lowlevel.FdStream(fd)
    pending = b""
    try:
        while True:
            try:
                data = await pipe.receive_some(65536)
            except trio.ClosedResourceError:
                break
            except OSError as err:
                if err.errno == errno.EBADF:
                    break
                raise
            if not data:
                break
            pending += data
            if b"\n" not in pending:
                if len(pending) > MAX_LINE:
                    on_output(stream, [pending[:MAX_LINE].decode("utf-8", "replace") + " [cut]"])
                    pending = b""
                continue
            *raw_lines, pending = pending.split(b"\n")
            on_output(stream, [raw[:MAX_LINE].rstrip(b"\r").decode("utf-8", "replace") for raw in raw_lines])
        if pending:
            on_output(stream, [pending[:MAX_LINE].decode("utf-8", "replace")])
    finally:
        await pipe.aclose()


class ChildProcess:
    """A backend's process as its shell drives it (`supervise.shell.Process`): the Child and the read ends
    of its output pipes, which `pump` owns and closes."""

    def __init__(self, child: Child, out_fd: int, err_fd: int) -> None:
        self.child = child
        self.pid = child.pid
        self._fds = (out_fd, err_fd)

    @classmethod
    def start(cls, spec: LaunchSpec, guardian: Guardian | None) -> ChildProcess:
        """Spawn `spec` (see `spawn`). Raises OSError, ValueError or SubprocessError."""
        return cls(*spawn(spec, guardian))

    async def wait(self) -> ExitInfo:
        return await self.child.wait()

    def signal_group(self, signum: int) -> None:
        # Only while the leader is unreaped: after that its pgid may belong to someone else.
        if self.child.running:
            self.child.kill_group(signum)

    async def pump(self, on_output: Callable[[str, list[str]], None]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump_chunks, self._fds[0], "stdout", on_output)
            nursery.start_soon(pump_chunks, self._fds[1], "stderr", on_output)
