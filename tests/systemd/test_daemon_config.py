"""The daemon config file: precedence, defaults, located errors, names resolved at load, and the example in
etc/swarmd."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from swarmd import config
from swarmd.api.access import AccessRule

ROOT = Path(__file__).resolve().parents[2]
NO_DEFAULT = {"SWARMD_CONFIG": "/nonexistent/swarmd.yaml"}  # this machine's /etc/swarmd must not leak in
#: A user and group database of our own: this machine's has no `swarmd` group, and no test may depend on
#: which users it has.
USERS = {"alice": 1001, "swarmd": 990}
GROUPS = {"swarmd": 990, "swarm": 2000}
NAMES = config.Names(user_id=USERS.get, group_id=GROUPS.get)


def load(path, names=NAMES):
    return config.load(str(path), environ=NO_DEFAULT, names=names)


def test_the_example_config_is_valid_and_documents_every_key():
    example = ROOT / "etc/swarmd/swarmd.yaml"
    values = load(example)
    assert values == config.DaemonConfig(
        backends="/etc/swarmd/backends.yaml", socket="/run/swarmd/swarmd.sock", socket_mode=0o660,
        socket_group="swarmd", socket_gid=990,
        access=(AccessRule(gid=990, role="poweruser", written="group swarmd"),),
        log_level="info", config_path=str(example))
    text = example.read_text()
    for key in (*config.KEYS, "path:", "mode:", "group:", "role"):
        assert key in text


def test_flags_win_over_the_file_which_wins_over_defaults(tmp_path):
    path = tmp_path / "swarmd.yaml"
    path.write_text("backends: fleet.yaml\nsocket:\n  path: api.sock\n  mode: '0600'\nlog_level: debug\n")
    from_file = config.resolve(config=str(path), environ=NO_DEFAULT)
    assert isinstance(from_file, config.DaemonConfig)
    assert from_file.backends == str(tmp_path / "fleet.yaml")  # relative to the config's directory
    assert from_file.socket == str(tmp_path / "api.sock")
    assert from_file.socket_mode == 0o600
    assert from_file.log_level == "debug"
    assert from_file.config_path == str(path)
    flags = config.resolve(config=str(path), backends="/b.yaml", socket="/s.sock", log_level="error",
                           environ=NO_DEFAULT)
    assert (flags.backends, flags.socket, flags.log_level) == ("/b.yaml", "/s.sock", "error")


def test_defaults_without_a_config_file():
    plain = config.resolve(environ=NO_DEFAULT)
    assert plain.config_path is None
    assert plain.backends == "/etc/swarmd/backends.yaml"
    assert plain.socket == "/run/swarmd/swarmd.sock"
    assert plain.log_level == "info"
    assert (plain.socket_mode, plain.socket_group, plain.socket_gid, plain.access) == (0o660, None, None, ())
    assert config.resolve(environ={**NO_DEFAULT, "SWARMD_BACKENDS": "/x/b.yaml"}).backends == "/x/b.yaml"
    under_systemd = config.resolve(environ={**NO_DEFAULT, "RUNTIME_DIRECTORY": "/run/swarmd-x:/run/other"})
    assert under_systemd.socket == "/run/swarmd-x/swarmd.sock"


def test_the_default_config_is_read_when_it_exists(tmp_path):
    default = tmp_path / "swarmd.yaml"
    assert config.resolve(environ={"SWARMD_CONFIG": str(default)}).config_path is None
    default.write_text("log_level: warning\n")
    assert config.resolve(environ={"SWARMD_CONFIG": str(default)}).log_level == "warning"


def test_an_explicit_config_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(config.ConfigInvalid) as caught:
        config.resolve(config=str(tmp_path / "nope.yaml"), environ=NO_DEFAULT)
    assert str(caught.value.problems[0]) == f"{tmp_path / 'nope.yaml'}:1:1: no such config file"


@pytest.mark.parametrize(("text", "expected"), [
    ("log_level: loud\n", "1:12: log_level: expected one of debug, info, warning, error, got 'loud'"),
    ("backends: [a]\n", "1:11: backends: expected the path of the backends file"),
    ("# c\nsockets: {}\n", "2:1: sockets: unknown key (expected one of backends, socket, access, log_level, "
     "http_listen, output_ring_lines, output_ring_bytes)"),
    ("output_ring_lines: 5\n", "1:20: output_ring_lines: expected a whole number from 10 to 1000000, got number 5"),
    ("output_ring_lines: '100'\n", "1:20: output_ring_lines: expected a whole number from 10 to 1000000"),
    ("output_ring_bytes: 12 parsecs\n", "1:20: output_ring_bytes: expected a whole number of bytes (or e.g. 2 MiB) "
     "from 65536 to 1073741824, got '12 parsecs'"),
    ("output_ring_bytes: 1024\n", "1:20: output_ring_bytes: expected a whole number of bytes"),
    ("socket:\n  mode: 0660\n", "2:9: socket.mode: write the mode as a quoted octal string"),
    ("socket:\n  mode: '0999'\n", "2:9: socket.mode: expected an octal mode such as \"0660\", got '0999'"),
    ("socket:\n  mode: '07777'\n", "2:9: socket.mode: expected permission bits only (at most 0777)"),
    ("socket:\n  path: /x\n  colour: red\n", "3:3: socket.colour: unknown key (expected path, mode, group)"),
    ("socket:\n  path: [a]\n", "2:9: socket.path: expected a file path, got a list"),
    ("socket: /run/x.sock\n", "1:9: socket: expected a mapping with path, mode, group; got '/run/x.sock'"),
    ("socket:\n  group: nosuchgroup\n", "2:10: socket.group: no group 'nosuchgroup' on this machine"),
    ("socket:\n  group: 4321\n", "2:10: socket.group: no group '4321' on this machine"),
    ("socket: {group: true}\n", "1:17: socket.group: expected a group name or id, got boolean true"),
    ("access:\n  - {user: alice, role: admin}\n  - {group: wheel, role: king}\n",
     "3:26: access[1].role: expected one of guest, user, poweruser, admin, owner, got 'king'"),
    ("access:\n  - {user: alice}\n", "2:5: access[0].role: expected one of"),
    ("access:\n  - {user: alice, role: admin}\n  - nobody\n", "3:5: access[1]: expected a mapping"),
    ("access:\n  - user: alice\n    uid: 3\n    role: user\n",
     "2:5: access[0]: give exactly one of user, group or uid (got user, uid)"),
    ("access:\n  - {role: user}\n", "2:5: access[0]: give exactly one of user, group or uid (got none)"),
    ("access:\n  - {uid: x, role: user}\n", "2:11: access[0].uid: expected a non-negative integer, got 'x'"),
    ("access:\n  - {uid: -1, role: user}\n", "2:11: access[0].uid: expected a non-negative integer, got number -1"),
    ("access:\n  - {user: [a], role: user}\n", "2:12: access[0].user: expected a user name, got a list"),
    ("access:\n  - {usr: a, role: user}\n", "2:6: access[0].usr: unknown key"),
    ("access: everyone\n", "1:9: access: expected a list of rules"),
    ("a: [1\n", "2:1: YAML syntax:"),
    ("- 1\n", "1:1: expected a mapping of settings"),
    ("backends: a\nbackends: b\n", "YAML syntax:"),
])
def test_problems_are_located(tmp_path, text, expected):
    path = tmp_path / "swarmd.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigInvalid) as caught:
        load(path)
    problems = [str(problem) for problem in caught.value.problems]
    assert all(problem.startswith(f"{path}:") for problem in problems)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(("text", "lines", "size"), [
    ("", 1000, 1024 * 1024),
    ("output_ring_lines: 50\noutput_ring_bytes: 4 MiB\n", 50, 4 * 1024 * 1024),
    ("output_ring_bytes: 65536\n", 1000, 65536),
    ("output_ring_bytes: 512k\n", 1000, 512 * 1024),
])
def test_the_output_ring_bounds(tmp_path, text, lines, size):
    path = tmp_path / "swarmd.yaml"
    path.write_text(text)
    values = load(path)
    assert (values.output_ring_lines, values.output_ring_bytes) == (lines, size)


def test_every_problem_is_listed_in_file_order(tmp_path):
    path = tmp_path / "swarmd.yaml"
    path.write_text("log_level: loud\nsocket:\n  mode: 660\n  group: nope\n  size: 3\ncolour: red\n"
                    "access:\n  - {user: alice, role: admin}\n  - {uid: 7, role: king, x: 1}\n  - 5\n")
    with pytest.raises(config.ConfigInvalid) as caught:
        load(path)
    assert [(p.line, p.col, p.message.split(":")[0]) for p in caught.value.problems] == [
        (1, 12, "log_level"), (3, 9, "socket.mode"), (4, 10, "socket.group"), (5, 3, "socket.size"),
        (6, 1, "colour"), (9, 20, "access[1].role"), (9, 26, "access[1].x"), (10, 5, "access[2]")]


def test_names_are_resolved_at_load(tmp_path):
    path = tmp_path / "swarmd.yaml"
    path.write_text("socket: {path: s.sock, group: swarm}\n"
                    "access:\n  - {user: alice, role: admin}\n  - {group: swarm, role: poweruser}\n"
                    "  - {uid: 1001, role: user}\n  - {user: '1234', role: guest}\n"
                    "  - {group: 77, role: guest}\n")
    numeric = config.Names(user_id=lambda name: USERS.get(name, int(name) if name.isdigit() else None),
                           group_id=lambda name: GROUPS.get(name, int(name) if name.isdigit() else None))
    loaded = load(path, numeric)
    assert loaded.socket == str(tmp_path / "s.sock")
    assert (loaded.socket_group, loaded.socket_gid) == ("swarm", 2000)
    assert loaded.access == (
        AccessRule(uid=1001, role="admin", written="user alice"),
        AccessRule(gid=2000, role="poweruser", written="group swarm"),
        AccessRule(uid=1001, role="user", written="uid 1001"),
        AccessRule(uid=1234, role="guest", written="user 1234"),  # numeric text naming nobody: the id
        AccessRule(gid=77, role="guest", written="group 77"),
    )


def test_the_system_databases_by_default(tmp_path):
    path = tmp_path / "swarmd.yaml"
    path.write_text("socket: {group: root}\n"
                    "access:\n  - {user: root, role: admin}\n  - {group: '4343', role: user}\n")
    loaded = config.load(str(path), environ=NO_DEFAULT)
    assert loaded.socket_gid == 0
    assert loaded.access == (AccessRule(uid=0, role="admin", written="user root"),
                             AccessRule(gid=4343, role="user", written="group 4343"))


def test_an_unknown_user_or_group_in_a_rule_warns_and_never_matches(tmp_path, caplog):
    path = tmp_path / "swarmd.yaml"
    path.write_text("access:\n  - {user: bob, role: admin}\n  - {group: staff, role: user}\n"
                    "  - {user: alice, role: poweruser}\n")
    with caplog.at_level("WARNING", logger="swarmd.config"):
        loaded = load(path)
    assert loaded.access == (AccessRule(role="admin", written="user bob"),
                             AccessRule(role="user", written="group staff"),
                             AccessRule(uid=1001, role="poweruser", written="user alice"))
    assert [record.getMessage() for record in caplog.records] == [
        f"{path}:2:12: access[0].user: no user 'bob' on this machine: the rule never matches until swarmd is "
        "restarted",
        f"{path}:3:13: access[1].group: no group 'staff' on this machine: the rule never matches until "
        "swarmd is restarted"]
    assert not loaded.access[0].matches(1001, {0, 1001}) and not loaded.access[1].matches(5, {0, 5})


def test_an_empty_config_is_all_defaults(tmp_path):
    path = tmp_path / "swarmd.yaml"
    path.write_text("# nothing set\n")
    assert load(path) == config.DaemonConfig(backends=config.DEFAULT_BACKENDS, socket=config.DEFAULT_SOCKET,
                                             config_path=str(path))
    assert load(path) == config.resolve(environ={"SWARMD_CONFIG": str(path)})


def test_serve_with_a_bad_config_exits_1_with_the_locations(tmp_path):
    path = tmp_path / "swarmd.yaml"
    path.write_text("log_level: loud\n")
    done = subprocess.run([sys.executable, "-m", "swarmd", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert f"{path}:1:12: log_level:" in done.stderr
    assert "nothing was started" in done.stderr
    missing = subprocess.run([sys.executable, "-m", "swarmd", "serve", "--config", str(tmp_path / "no.yaml")],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1
    assert "no such config file" in missing.stderr


def test_serve_with_an_unknown_socket_group_exits_1_before_anything_starts(tmp_path):
    path = tmp_path / "swarmd.yaml"
    path.write_text(f"backends: b.yaml\nsocket:\n  path: {tmp_path / 's.sock'}\n"
                    "  group: no-such-group-here\n")
    done = subprocess.run([sys.executable, "-m", "swarmd", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert f"{path}:4:10: socket.group: no group 'no-such-group-here' on this machine" in done.stderr
    assert not (tmp_path / "s.sock").exists()


def test_check_validates_the_config_and_the_backends_file_it_names(tmp_path):
    (tmp_path / "backends.yaml").write_text("backends: {}\n")
    path = tmp_path / "swarmd.yaml"
    path.write_text("backends: backends.yaml\n")
    done = subprocess.run([sys.executable, "-m", "swarmd", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert f"{path}: ok" in done.stdout
    assert f"{tmp_path / 'backends.yaml'}: ok, 0 backends" in done.stdout
