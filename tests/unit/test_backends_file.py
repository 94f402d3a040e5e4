"""The backends file: located errors, byte-exact round trip, atomic writes that keep the old file on
failure. Real files on disk."""

import os
import stat
import subprocess
import sys

import pytest

from swarmd import backends_file as bf

COMMENTED = """\
# swarmd backends -- a person wrote this
backends:
  0:                      # the first one
    type: process
    title: "web"          # quoted on purpose
    enabled: true
    settings:
      # how to start it
      command: python3 -m http.server --bind 127.0.0.1 {port}
      ready_check: 'http://127.0.0.1:{port}/'
      port: 8000
  # a disabled one
  1:
    type: process
    title: spare
    enabled: false
    settings: {command: sleep 100, stop_timeout: 3}
"""

THREE_MISTAKES = """\
backends:
  0:
    type: process
    title: web
    enabled: yes
    settings:
      command: sleep 100
      port: abc
  1:
    type: process
    settings:
      colour: blue
"""


def test_valid_file_fills_defaults():
    loaded = bf.parse("b.yaml", COMMENTED)
    assert list(loaded.backends) == [0, 1]
    web = loaded.backends[0]
    assert (web.type_id, web.title, web.enabled) == ("process", "web", True)
    assert web.settings["port"] == 8000
    assert web.settings["restart"] == "on-failure"  # default filled in
    assert loaded.backends[1].settings["stop_timeout"] == 3.0


def test_three_mistakes_three_located_errors():
    with pytest.raises(bf.FileInvalid) as info:
        bf.parse("backends.yaml", THREE_MISTAKES)
    lines = [str(p) for p in info.value.problems]
    assert lines[:2] == [
        "backends.yaml:5:14: backends.0.enabled: expected true or false, got 'yes' "
        "(YAML 1.2 reads it as a string: write true or false)",
        "backends.yaml:8:7: settings.port: expected an integer, got 'abc'",
    ]
    assert lines[2].startswith("backends.yaml:12:7: settings.colour: unknown setting for type 'process' "
                               "(known: command, cwd, env, gpu_id, ")
    assert len(lines) == 3


@pytest.mark.parametrize("text, expected", [
    ("backends:\n  0: [\n", "b.yaml:3:1: YAML syntax"),
    ("backends:\n  0: {type: process}\n  0: {type: process}\n", "b.yaml:3:3: YAML syntax: found duplicate key"),
    ("backends:\n  -1: {type: process}\n", "b.yaml:2:3: backend id -1: expected a non-negative integer"),
    ("backends:\n  0: {type: nope}\n", "b.yaml:2:13: backends.0.type: unknown backend type 'nope'"),
    ("backends:\n  0: {title: x}\n", "b.yaml:2:3: backends.0: missing 'type'"),
    ("frontends: {}\n", "b.yaml:1:1: unknown top-level key 'frontends'"),
    ("- a\n", "b.yaml:1:1: expected a mapping"),
])
def test_each_problem_is_located(text, expected):
    with pytest.raises(bf.FileInvalid) as info:
        bf.parse("b.yaml", text)
    assert str(info.value.problems[0]).startswith(expected)


def test_empty_or_missing_file_is_an_empty_fleet(tmp_path):
    assert bf.parse("b.yaml", "").backends == {}
    assert bf.parse("b.yaml", "backends:\n").backends == {}
    assert bf.read(str(tmp_path / "absent.yaml")).backends == {}


def test_round_trip_is_byte_identical():
    assert bf.Editor("b.yaml", COMMENTED).render() == COMMENTED
    four = COMMENTED.replace("\n  ", "\n    ").replace("\n    0:", "\n  0:")
    # files indented by 4 come back as they were too
    text = "backends:\n    0:\n        type: process   # c\n        settings:\n            command: x\n"
    assert bf.Editor("b.yaml", text).render() == text
    assert four  # (kept for readability of the case above)


def test_editing_one_setting_changes_exactly_that_line():
    editor = bf.Editor("b.yaml", COMMENTED)
    editor.set_backend(0, settings={"port": 8001})
    new = editor.render()
    old_lines, new_lines = COMMENTED.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)
    changed = [(a, b) for a, b in zip(old_lines, new_lines, strict=True) if a != b]
    assert changed == [("      port: 8000", "      port: 8001")]


def test_edit_keeps_quoting_and_adds_missing_keys():
    editor = bf.Editor("b.yaml", COMMENTED)
    editor.set_backend(0, title="web two", settings={"ready_check": "tcp", "stop_timeout": 2.5})
    new = editor.render()
    assert '    title: "web two"      # quoted on purpose\n' in new
    assert "      stop_timeout: 2.5\n  # a disabled one\n  1:\n" in new
    assert "      ready_check: 'tcp'\n" in new
    assert "      stop_timeout: 2.5\n" in new
    assert bf.parse("b.yaml", new).backends[0].settings["stop_timeout"] == 2.5


def test_rename_add_delete_keep_comments():
    editor = bf.Editor("b.yaml", COMMENTED)
    editor.rename_backend(0, 7)
    editor.delete_backend(1)
    editor.set_backend(8, type_id="process", title="new", enabled=True, settings={"command": "sleep 1",
                                                                                    "env": "A=1\nB=2"})
    new = editor.render()
    assert "  7:                      # the first one\n" in new
    assert "# swarmd backends -- a person wrote this\n" in new
    loaded = bf.parse("b.yaml", new)
    assert list(loaded.backends) == [7, 8]
    assert loaded.backends[8].settings["env"] == "A=1\nB=2\n"


def test_atomic_write_keeps_mode_and_leaves_no_temp(tmp_path):
    path = tmp_path / "backends.yaml"
    path.write_text(COMMENTED)
    os.chmod(path, 0o640)
    bf.atomic_write(str(path), "backends: {}\n")
    assert path.read_text() == "backends: {}\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["backends.yaml"]


def test_atomic_write_refuses_a_read_only_file(tmp_path):
    path = tmp_path / "backends.yaml"
    path.write_text(COMMENTED)
    os.chmod(path, 0o444)
    with pytest.raises(PermissionError):
        bf.atomic_write(str(path), "backends: {}\n")
    assert path.read_text() == COMMENTED
    assert [p.name for p in tmp_path.iterdir()] == ["backends.yaml"]


def test_atomic_write_through_a_symlink_keeps_the_link(tmp_path):
    target = tmp_path / "real.yaml"
    target.write_text(COMMENTED)
    link = tmp_path / "backends.yaml"
    link.symlink_to(target)
    bf.atomic_write(str(link), "backends: {}\n")
    assert link.is_symlink()
    assert target.read_text() == "backends: {}\n"


def test_full_disk_leaves_the_old_file_intact(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        path = mount / "backends.yaml"
        path.write_text(COMMENTED)
        with pytest.raises(OSError):
            bf.atomic_write(str(path), COMMENTED + "#" * 64 * 1024 + "\n")
        assert path.read_text() == COMMENTED
        assert [p.name for p in mount.iterdir()] == ["backends.yaml"]
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_check_command_prints_located_errors(tmp_path):
    path = tmp_path / "backends.yaml"
    path.write_text(THREE_MISTAKES)
    result = subprocess.run([sys.executable, "-m", "swarmd", "check", "--backends", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[1] == f"{path}:8:7: settings.port: expected an integer, got 'abc'"
    path.write_text(COMMENTED)
    result = subprocess.run([sys.executable, "-m", "swarmd", "check", "--backends", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compare_and_swap_write_keeps_a_save_made_meanwhile(tmp_path):
    path = tmp_path / "backends.yaml"
    path.write_text(COMMENTED)
    base = bf.digest_of(path.read_bytes())
    path.write_text(COMMENTED + "# a person saved this meanwhile\n")
    with pytest.raises(bf.Conflict):
        bf.atomic_write(str(path), "backends: {}\n", expect_digest=base)
    assert path.read_text().endswith("# a person saved this meanwhile\n")
    assert [p.name for p in tmp_path.iterdir()] == ["backends.yaml"]
    bf.atomic_write(str(path), "backends: {}\n", expect_digest=bf.digest_of(path.read_bytes()))
    assert path.read_text() == "backends: {}\n"


def test_the_fast_loader_and_the_round_trip_loader_agree():
    fast, document = bf.parse_document("b.yaml", COMMENTED)
    assert document is None  # a valid file is read by the fast loader alone
    round_trip = bf._validate("b.yaml", bf._load_doc("b.yaml", COMMENTED)[0], bf.TYPES)
    assert round_trip == (dict(fast.backends), [])
    # YAML 1.2 in both: 'yes' stays a string, so the error is the same either way
    with pytest.raises(bf.FileInvalid, match="YAML 1.2 reads it as a string"):
        bf.parse("b.yaml", COMMENTED.replace("enabled: true", "enabled: yes"))
