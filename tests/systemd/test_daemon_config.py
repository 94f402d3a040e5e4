"""The daemon config file: precedence, defaults, located errors, and the example in etc/swarmd."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from swarmd import config
from swarmd.api.access import AccessRule

ROOT = Path(__file__).resolve().parents[2]
NO_DEFAULT = {"SWARMD_CONFIG": "/nonexistent/swarmd.yaml"}  # this machine's /etc/swarmd must not leak in


def test_the_example_config_is_valid_and_documents_every_key():
    example = ROOT / "etc/swarmd/swarmd.yaml"
    values = config.load(str(example))
    assert values.backends == "/etc/swarmd/backends.yaml"
    assert values.log_level == "info"
    assert values.access.socket_path == "/run/swarmd/swarmd.sock"
    assert values.access.socket_mode == 0o660
    assert values.access.socket_group == "swarmd"
    assert values.access.rules == [AccessRule(group="swarmd", role="poweruser")]
    text = example.read_text()
    for key in (*config.KEYS, "path:", "mode:", "group:", "role"):
        assert key in text


def test_flags_win_over_the_file_which_wins_over_defaults(tmp_path):
    path = tmp_path / "swarmd.yaml"
    path.write_text("backends: fleet.yaml\nsocket:\n  path: api.sock\n  mode: '0600'\nlog_level: debug\n")
    from_file = config.resolve(config=str(path), environ=NO_DEFAULT)
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
    ("# c\nsockets: {}\n", "2:1: sockets: unknown key"),
    ("socket:\n  mode: 0660\n", "2:9: socket.mode: write the mode as a quoted octal string"),
    ("socket:\n  path: /x\n  colour: red\n", "3:3: socket.colour: unknown key"),
    ("access:\n  - {user: root, role: admin}\n  - {group: wheel, role: king}\n",
     "3:26: access[1].role: expected one of"),
    ("access:\n  - {user: root, role: admin}\n  - nobody\n", "3:5: access[1]: expected a mapping"),
    ("access: everyone\n", "1:9: access: expected a list of rules"),
    ("a: [1\n", "2:1: YAML syntax:"),
    ("- 1\n", "1:1: expected a mapping of settings"),
    ("backends: a\nbackends: b\n", "YAML syntax:"),
])
def test_problems_are_located(tmp_path, text, expected):
    path = tmp_path / "swarmd.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigInvalid) as caught:
        config.load(str(path))
    first = str(caught.value.problems[0])
    assert first.startswith(str(path) + ":")
    assert expected in first, first


def test_every_problem_is_listed_in_file_order(tmp_path):
    path = tmp_path / "swarmd.yaml"
    path.write_text("log_level: loud\nsocket:\n  mode: 660\ncolour: red\n")
    with pytest.raises(config.ConfigInvalid) as caught:
        config.load(str(path))
    assert [(p.line, p.col) for p in caught.value.problems] == [(1, 12), (3, 9), (4, 1)]


def test_an_empty_config_is_all_defaults(tmp_path):
    path = tmp_path / "swarmd.yaml"
    path.write_text("# nothing set\n")
    assert config.load(str(path)) == config.FileValues(str(path))


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


def test_check_validates_the_config_and_the_backends_file_it_names(tmp_path):
    (tmp_path / "backends.yaml").write_text("backends: {}\n")
    path = tmp_path / "swarmd.yaml"
    path.write_text("backends: backends.yaml\n")
    done = subprocess.run([sys.executable, "-m", "swarmd", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert f"{path}: ok" in done.stdout
    assert f"{tmp_path / 'backends.yaml'}: ok, 0 backends" in done.stdout
