"""What the daemon imports before its backends start: never the web stack (it is imported once every
backend's start has run), and never the NVML binding on a host whose driver library does not load.

Each check runs in a fresh interpreter: this test process has imported everything already."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from swarmd import gpu


def imported_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter has imported after running `code`."""
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"],
        capture_output=True, text=True, timeout=60, check=True)
    return set(done.stdout.split())


def test_the_daemon_module_does_not_import_the_web_stack() -> None:
    # What `swarmd serve` imports before trio.run: the CLI, the daemon, and what a start-up error needs.
    modules = imported_after("import swarmd.cli, swarmd.daemon\nswarmd.cli._startup_errors()")
    assert {"trio", "swarmd", "ruamel"} <= modules
    assert not modules & {"quart", "quart_trio", "flask", "werkzeug", "jinja2", "hypercorn", "prometheus_client"}


def _nvml_loads() -> bool:
    try:
        ctypes.CDLL(gpu.NVML_LIBRARY)
    except OSError:
        return False
    return True


@pytest.mark.skipif(_nvml_loads(), reason="this host has the NVIDIA driver's library")
def test_without_the_driver_library_the_nvml_binding_is_not_imported() -> None:
    modules = imported_after("from swarmd import gpu\ninventory = gpu.NvmlInventory()\nassert not inventory.available")
    assert "pynvml" not in modules
