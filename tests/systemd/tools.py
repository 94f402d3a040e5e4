"""systemd's command-line tools for the tests, installed from Debian's `systemd` package when missing.

The tests that use them must fail, not skip, on a machine that lacks them: a CI without systemd would
otherwise pass without ever checking the unit files.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

_tried_install = False


def systemd_tool(name: str) -> str:
    """The path of `name` (systemd-analyze, systemd-socket-activate, ...); installs Debian's `systemd`
    package once when it is missing and this user can (root, apt-get). Fails the test otherwise."""
    global _tried_install
    path = shutil.which(name)
    if path is None and not _tried_install and os.geteuid() == 0 and shutil.which("apt-get"):
        _tried_install = True
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "systemd"],
                       env=env, capture_output=True, timeout=600)
        path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: install Debian's `systemd` package (apt-get install systemd)")
    return path
