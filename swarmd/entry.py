"""The `swarmd` command's entry point: `swarmd serve` runs the daemon in an interpreter started with -OO.

Why: a daemon never reads a docstring, yet CPython keeps every imported module's -- swarmd's, trio's,
quart's, werkzeug's, ruamel's -- in memory for as long as it runs: ~3 MB of the ~60 MB the daemon holds at
1000 backends (bench: scale). `-OO` compiles them away (and `assert` statements with them: swarmd's only
narrow types). An interpreter cannot drop them once started, so `serve` executes itself again with -OO
before importing anything else: the same interpreter, flags, arguments, environment and open files, and
the same pid -- systemd's main pid, socket activation (LISTEN_PID) and the notify socket see no
difference. Every other command (`check`, `import`) runs as it is.

Only when the installation was compiled for it: without the optimized bytecode (`*.opt-2.pyc`, which
`make` and the install steps in README.md write with `python -OO -m compileall`) every start would compile
each module from source, a second or more, in a unit whose files are read-only. So the re-execution
happens only when that bytecode is there for the standard library, the dependencies and swarmd (one module
of each stands for the rest), the interpreter was started without -O, and SWARMD_OPTIMIZE is not "0" (set
it to keep docstrings and asserts, e.g. to debug).
"""

from __future__ import annotations

import importlib.util
import os
import sys

#: One module of each part of the installation: its optimized bytecode stands for that part's.
_SENTINELS = ("typing", "trio", "swarmd.cli")


def main() -> int:
    """`swarmd ...`: `serve` in an optimized interpreter when it can be (see the module docstring)."""
    argv = sys.argv[1:]
    if _wants_optimized(argv):
        _execute_optimized()  # returns only when the interpreter could not be executed: run as is
    from swarmd.cli import main as cli_main

    return cli_main(argv)


def _wants_optimized(argv: list[str]) -> bool:
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    return (command == "serve" and sys.flags.optimize == 0 and os.environ.get("SWARMD_OPTIMIZE") != "0"
            and _optimized_bytecode_installed())


def _optimized_bytecode_installed() -> bool:
    """True when each sentinel module has its -OO bytecode next to its source (or has no source)."""
    for name in _SENTINELS:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin is None or not origin.endswith(".py"):
            continue
        if not os.path.exists(importlib.util.cache_from_source(origin, optimization=2)):
            return False
    return True


def _execute_optimized() -> None:
    """Replace this process with the same command line under `-OO` (`sys.orig_argv`: the interpreter's
    own flags, then `-m swarmd` or the script, then the arguments)."""
    original = sys.orig_argv
    try:
        os.execv(sys.executable, [original[0], "-OO", *original[1:]])
    except OSError:
        return
