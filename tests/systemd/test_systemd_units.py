"""The unit files and the sysusers.d/tmpfiles.d snippets, checked by systemd's own tools.

`systemd-analyze verify` insists that ExecStart's binary exists. The unit names the installed path,
/opt/swarmd/bin/swarmd; the test renders a copy in which that one path is replaced by the `swarmd` of the
environment running the tests (the same entry point that `pip install` puts in /opt/swarmd/bin), asserts
that nothing else differs, and verifies the copy. Nothing is installed on this machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.systemd.tools import systemd_tool

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
INSTALLED_SWARMD = "/opt/swarmd/bin/swarmd"


def directives(path: Path) -> dict[str, list[str]]:
    """KEY -> every value it is given in a unit file (comments and section headers left out)."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "min" else 1)


def test_systemd_analyze_verify_passes_on_the_units(tmp_path):
    analyze = systemd_tool("systemd-analyze")
    swarmd = Path(sys.executable).parent / "swarmd"
    assert swarmd.is_file() and os.access(swarmd, os.X_OK), f"{swarmd}: install swarmd first (pip install -e .)"
    original = (UNITS / "swarmd.service").read_text()
    assert original.count(INSTALLED_SWARMD) == 1
    rendered = original.replace(INSTALLED_SWARMD, str(swarmd))
    (tmp_path / "swarmd.service").write_text(rendered)
    (tmp_path / "swarmd.socket").write_text((UNITS / "swarmd.socket").read_text())
    done = subprocess.run([analyze, "verify", "--man=no", "swarmd.service", "swarmd.socket"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    # verify returns 0 even for unknown keys or bad values ("... ignoring"): any line about our units fails.
    ours = [line for line in output.splitlines() if "swarmd" in line or str(tmp_path) in line]
    assert done.returncode == 0 and not ours, output


def test_the_service_speaks_systemds_protocol_and_stops_by_its_own_ladder():
    unit = directives(UNITS / "swarmd.service")
    expect = {
        "Type": "notify", "NotifyAccess": "main", "ExecReload": "/bin/kill -HUP $MAINPID",
        "RuntimeDirectory": "swarmd", "KillMode": "mixed", "Restart": "on-failure", "User": "swarmd",
        "Group": "swarmd", "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
        "OOMPolicy": "continue",
    }
    for key, value in expect.items():
        assert unit.get(key) == [value], key
    assert unit["ExecStart"] == [f"{INSTALLED_SWARMD} serve --config /etc/swarmd/swarmd.yaml"]
    assert seconds(unit["WatchdogSec"][0]) >= 10  # pinged every WatchdogSec/2 from the event loop
    assert {"video", "render"} <= set(unit["SupplementaryGroups"][0].split())
    writable = unit["ReadWritePaths"][0].split()
    assert "/etc/swarmd" in writable  # the API writes backends.yaml back
    assert {"-/srv", "-/opt"} <= set(writable)  # ComfyUI in /srv or /opt writes its outputs there
    assert "PrivateDevices" not in unit and "MemoryDenyWriteExecute" not in unit  # GPUs, CUDA JIT


def test_timeout_stop_sec_leaves_room_for_the_largest_stop_timeout():
    """systemd's SIGKILL must come after swarmd's own ladder: TimeoutStopSec above every stop_timeout
    of the example fleet and the default one, with 10 s to spare."""
    from swarmd.types import TYPES

    defaults = [spec.default for t in TYPES.values() for spec in t.settings if spec.name == "stop_timeout"]
    unit = directives(UNITS / "swarmd.service")
    timeout = seconds(unit["TimeoutStopSec"][0])
    doc = YAML(typ="safe").load((ROOT / "etc/swarmd/backends.yaml").read_text())
    stop_timeouts = [float(b.get("settings", {}).get("stop_timeout", 0)) for b in doc["backends"].values()]
    assert defaults
    assert timeout >= max([*defaults, *stop_timeouts]) + 10


def test_the_socket_unit_matches_the_default_socket():
    from swarmd import config

    unit = directives(UNITS / "swarmd.socket")
    assert unit["ListenStream"] == [config.DEFAULT_SOCKET]
    assert unit["Service"] == ["swarmd.service"]
    assert unit["SocketMode"] == ["0660"]


def test_sysusers_creates_the_user_in_the_gpu_groups(tmp_path):
    sysusers = systemd_tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    done = subprocess.run([sysusers, f"--root={tmp_path}", str(UNITS / "sysusers.d/swarmd.conf")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    users = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()}
    assert users["swarmd"][5] == "/var/lib/swarmd"
    assert users["swarmd"][6] == "/usr/sbin/nologin"
    assert int(users["swarmd"][2]) < 1000  # a system user
    for group in ("video", "render"):
        assert "swarmd" in groups[group][3].split(","), group


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles --root chowns: root only")
def test_tmpfiles_makes_etc_swarmd_writable_by_swarmd_but_sticky(tmp_path):
    sysusers = systemd_tool("systemd-sysusers")
    tmpfiles = systemd_tool("systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    subprocess.run([sysusers, f"--root={tmp_path}", str(UNITS / "sysusers.d/swarmd.conf")], check=True,
                   capture_output=True, timeout=60)
    done = subprocess.run([tmpfiles, "--create", f"--root={tmp_path}", str(UNITS / "tmpfiles.d/swarmd.conf")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    passwd = (tmp_path / "etc/passwd").read_text().splitlines()
    uid, gid = next(map(int, line.split(":")[2:4]) for line in passwd if line.startswith("swarmd:"))
    etc = (tmp_path / "etc/swarmd").stat()
    assert (etc.st_mode & 0o7777, etc.st_uid, etc.st_gid) == (0o1775, 0, gid)
    state = (tmp_path / "var/lib/swarmd").stat()
    assert (state.st_uid, state.st_gid) == (uid, gid)
