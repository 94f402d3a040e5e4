"""Access by peer uid against a real `swarmd serve --config FILE` (socket mode and `access:` rules from the
daemon config); clients run as uid 65534 through `setpriv`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers import (
    DEFAULT_BACKENDS,
    NOBODY_POWERUSER_CONFIG,
    Daemon,
    daemon_with_config,
    nobody_ctl_argv,
)

SETPRIV = shutil.which("setpriv")


pytestmark = [
    pytest.mark.skipif(SETPRIV is None or os.getuid() != 0, reason="needs root and setpriv"),
]


@pytest.fixture(scope="module")
def configured() -> Iterator[Daemon]:
    with daemon_with_config(DEFAULT_BACKENDS, NOBODY_POWERUSER_CONFIG) as running:
        yield running


def as_nobody(daemon: Daemon, *args: str) -> tuple[int, object]:
    argv = [*nobody_ctl_argv(), "--socket", str(daemon.socket), "--json", *args]
    done = subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=30)
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None


def test_socket_mode_from_config(configured: Daemon) -> None:
    assert os.stat(configured.socket).st_mode & 0o777 == 0o666


def test_poweruser_by_uid_lists_and_restarts_but_cannot_edit(configured: Daemon) -> None:
    status, answer = as_nobody(configured, "list")
    assert status == 0 and set(answer) == {"0", "1"}
    status, answer = as_nobody(configured, "restart")
    assert status == 0 and answer["result"] == "Success."
    before = configured.file_bytes()
    status, answer = as_nobody(configured, "edit", "0", "--title", "x", "restart=never")
    assert status == 1 and answer == {"error_id": "bad_permissions", "error": "You lack permissions for this route."}
    status, answer = as_nobody(configured, "rm", "0")
    assert status == 1 and answer["error_id"] == "bad_permissions"
    assert configured.file_bytes() == before
