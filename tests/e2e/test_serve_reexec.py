"""`swarmd serve` executes itself again under -OO, in the same pid, when the installation holds the optimized
bytecode (swarmd/entry.py); otherwise, or with SWARMD_OPTIMIZE=0, it runs as started.

Each daemon here gets a bytecode cache of its own (PYTHONPYCACHEPREFIX), so what is "installed" is what the
test wrote there: the -OO bytecode of the three modules that stand for the stdlib, the dependencies and
swarmd. The optimized daemon compiles every other module from source (a second or so).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from swarmd.entry import _SENTINELS
from tests.helpers import Daemon, backend_yaml, wait_until

#: A backend that says how its own interpreter was started, then stays up.
SAYS_OPTIMIZE = ('python3 -c "import sys, time; print(\'optimize\', sys.flags.optimize, flush=True); '
                 'time.sleep(600)"')


def _environment(cache: Path, *, installed: bool, **extra: str) -> dict[str, str]:
    """The daemon's environment with `cache` as its bytecode cache; `installed`: the sentinels' -OO bytecode
    written there first."""
    env = {name: value for name, value in os.environ.items() if name not in ("SWARMD_OPTIMIZE", "PYTHONOPTIMIZE")}
    env.update(PYTHONPYCACHEPREFIX=str(cache), **extra)
    if installed:
        code = ("import importlib.util, py_compile, sys\n"
                "for name in sys.argv[1:]:\n"
                "    py_compile.compile(importlib.util.find_spec(name).origin, optimize=2, doraise=True)\n")
        subprocess.run([sys.executable, "-c", code, *_SENTINELS], env=env, check=True, timeout=60)
    return env


def _argv(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return [part.decode() for part in handle.read().split(b"\0")[:-1]]


def _started_as(daemon: Daemon) -> list[str]:
    return [sys.executable, "-m", "swarmd", "serve", "--backends", str(daemon.backends), "--socket",
            str(daemon.socket)]


def test_serve_runs_under_OO_in_the_same_pid_and_its_backends_do_not(tmp_path):
    env = _environment(tmp_path / "pycache", installed=True)
    daemon = Daemon(tmp_path, backend_yaml({0: {"settings": {"command": SAYS_OPTIMIZE}}}), env=env,
                    listen_timeout=60)
    try:
        started = _started_as(daemon)
        assert _argv(daemon.proc.pid) == [started[0], "-OO", *started[1:]]  # the pid it was started as
        assert daemon.wait_log(r"optimize (\d)") == ["0"]  # a backend's interpreter is its own
        wait_until(lambda: daemon.call("ListBackends").json()["0"]["status"] == "running", what="running")
    finally:
        daemon.finish()


def test_serve_runs_as_started_without_the_optimized_bytecode_or_with_SWARMD_OPTIMIZE_0(tmp_path):
    for name, env in (("not installed", _environment(tmp_path / "empty", installed=False)),
                      ("SWARMD_OPTIMIZE=0", _environment(tmp_path / "pycache", installed=True,
                                                         SWARMD_OPTIMIZE="0"))):
        directory = tmp_path / name
        directory.mkdir()
        daemon = Daemon(directory, backend_yaml({}), env=env)
        try:
            assert _argv(daemon.proc.pid) == _started_as(daemon), name
        finally:
            daemon.finish()
