"""Access by peer uid against a real `swarmd serve --config FILE` (socket mode and `access:` rules from the
daemon config); clients run as uid 65534 through `setpriv`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.helpers import DEFAULT_BACKENDS, Daemon, nobody_ctl_argv

SETPRIV = shutil.which("setpriv")


def _serve_takes_config() -> bool:
    done = subprocess.run([sys.executable, "-m", "swarmd", "serve", "--help"], capture_output=True, text=True)
    return "--config" in done.stdout


pytestmark = [
    pytest.mark.skipif(SETPRIV is None or os.getuid() != 0, reason="needs root and setpriv"),
    pytest.mark.skipif(not _serve_takes_config(), reason="swarmd serve has no --config yet"),
]

CONFIG = """\
# swarmd daemon config for the access tests
socket:
  mode: "0666"
access:
  - {uid: 65534, role: poweruser}
"""


@pytest.fixture(scope="module")
def configured() -> Iterator[Daemon]:
    config = os.path.join("/tmp", f"swarmd-access-{os.getpid()}.yaml")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(CONFIG)
    try:
        running = Daemon(backends_text=DEFAULT_BACKENDS, extra_args=("--config", config))
        yield running
        running.finish()
    finally:
        os.unlink(config)


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
