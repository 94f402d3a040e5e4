"""The backends file: located errors, byte-exact round trip, atomic writes that keep the old file on
failure. Real files on disk."""

import fcntl
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from swarmd import backends_file as bf
from swarmd.backends_file.parser import _validate
from swarmd.backends_file.roundtrip import _load_doc
from tests.helpers import wait_until

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
    assert lines[2].startswith("backends.yaml:12:7: backends.1.settings: unknown setting 'colour' for type "
                               "'process' (known: command, cwd, env, gpu_id, ")
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
    # files indented by 4 come back as they were too
    text = "backends:\n    0:\n        type: process   # c\n        settings:\n            command: x\n"
    assert bf.Editor("b.yaml", text).render() == text


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
    assert loaded.backends[8].settings["env"] == "A=1\nB=2"  # written `|-`: no newline is added
    assert "      env: |-\n        A=1\n        B=2\n" in new


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backends.yaml", "backends.yaml.lock"]
    bf.atomic_write(str(path), "backends: {}\n", expect_digest=bf.digest_of(path.read_bytes()))
    assert path.read_text() == "backends: {}\n"


def test_the_fast_loader_and_the_round_trip_loader_agree():
    fast = bf.parse("b.yaml", COMMENTED)
    round_trip = _validate("b.yaml", _load_doc("b.yaml", COMMENTED)[0], bf.TYPES)
    assert round_trip == (dict(fast.backends), [0, 1], [])
    # YAML 1.2 in both: 'yes' stays a string, so the error is the same either way
    with pytest.raises(bf.FileInvalid, match="YAML 1.2 reads it as a string"):
        bf.parse("b.yaml", COMMENTED.replace("enabled: true", "enabled: yes"))


# -- validation: bounded messages, strict names ------------------------------------------------------------


def test_title_is_checked_like_the_api_checks_it():
    with pytest.raises(bf.FileInvalid) as info:
        bf.parse("b.yaml", 'backends:\n  0:\n    type: process\n    title: "a\\0b"\n')
    assert str(info.value.problems[0]).startswith("b.yaml:4:12: backends.0.title: must not contain a NUL")
    with pytest.raises(bf.FileInvalid, match=r"b.yaml:4:12: backends.0.title: expected text, got a list"):
        bf.parse("b.yaml", "backends:\n  0:\n    type: process\n    title: [a]\n")
    assert bf.parse("b.yaml", "backends:\n  0:\n    type: process\n    title: 12\n").backends[0].title == "12"


def test_setting_names_must_be_text():
    with pytest.raises(bf.FileInvalid) as info:
        bf.parse("b.yaml", "backends:\n  0:\n    type: process\n    settings:\n      1: x\n      false: y\n")
    assert [str(p) for p in info.value.problems] == [
        "b.yaml:5:7: backends.0.settings: a setting name must be text, got number 1",
        "b.yaml:6:7: backends.0.settings: a setting name must be text, got boolean false",
    ]


#: 9 levels of 9 aliases: about 390 million strings if anything walked or printed it in full.
ALIAS_BOMB = "".join(
    [f"lol0: &l0 [{', '.join(['lol'] * 9)}]\n"]
    + [f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)])


@pytest.mark.timeout(20)
def test_an_alias_bomb_is_refused_with_short_messages():
    text = ALIAS_BOMB + (
        "backends:\n"
        "  0:\n"
        "    type: *l8\n"
        "    title: *l8\n"
        "    enabled: *l8\n"
        "  1:\n"
        "    type: process\n"
        "    settings:\n"
        "      env: {A: *l8}\n"
        "      cwd: *l8\n")
    with pytest.raises(bf.FileInvalid) as info:
        bf.parse("b.yaml", text)
    messages = [p.message for p in info.value.problems]
    assert all(len(m) < 300 for m in messages), messages
    assert "unknown top-level key 'lol8' (expected 'backends')" in messages
    assert "backends.0.type: unknown backend type a list (known: comfyui_api, comfyui_selfstart, process)" in messages
    assert "backends.0.title: expected text, got a list" in messages
    assert "backends.0.enabled: expected true or false, got a list" in messages
    assert "settings.env: expected KEY: VALUE pairs of plain values" in messages
    assert "settings.cwd: expected text, got a list" in messages


def test_long_values_are_shortened_in_messages():
    with pytest.raises(bf.FileInvalid) as info:
        bf.parse("b.yaml", f"backends:\n  0:\n    type: {'x' * 5000}\n    enabled: {'y' * 5000}\n")
    assert all(len(p.message) < 300 for p in info.value.problems)


# -- the write lock ----------------------------------------------------------------------------------------


def test_the_lock_file_lets_in_only_who_may_write_the_backends_file(tmp_path):
    for file_mode, lock_mode in ((0o664, 0o660), (0o644, 0o600), (0o666, 0o666), (0o620, 0o660)):
        path = tmp_path / f"b{file_mode:o}.yaml"
        path.write_text(COMMENTED)
        os.chmod(path, file_mode)
        bf.atomic_write(str(path), "backends: {}\n", expect_digest=bf.digest_of(COMMENTED.encode()))
        lock = tmp_path / f"b{file_mode:o}.yaml.lock"
        assert stat.S_IMODE(os.lstat(lock).st_mode) == lock_mode, f"{file_mode:o}"
        assert stat.S_ISREG(os.lstat(lock).st_mode)
    # one made too wide (say by `flock(1)` under a lax umask) is narrowed by the next write
    lock = tmp_path / "b664.yaml.lock"
    os.chmod(lock, 0o666)
    bf.atomic_write(str(tmp_path / "b664.yaml"), "backends:\n", expect_digest=bf.digest_of(b"backends: {}\n"))
    assert stat.S_IMODE(os.lstat(lock).st_mode) == 0o660


def test_a_symlink_in_place_of_the_lock_is_refused(tmp_path):
    path = tmp_path / "backends.yaml"
    path.write_text(COMMENTED)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.chmod(victim, 0o644)
    (tmp_path / "backends.yaml.lock").symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link"):
        bf.atomic_write(str(path), "backends: {}\n", expect_digest=bf.digest_of(COMMENTED.encode()))
    assert path.read_text() == COMMENTED
    assert victim.read_text() == "precious\n" and stat.S_IMODE(os.stat(victim).st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backends.yaml", "backends.yaml.lock", "victim"]


def test_a_held_lock_times_out_with_a_message_a_person_can_act_on(tmp_path):
    path = tmp_path / "backends.yaml"
    path.write_text(COMMENTED)
    lock = str(path) + ".lock"
    holder = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)  # a second open file description: its own flock
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(bf.LockTimeout) as info:
            bf.atomic_write(str(path), "backends: {}\n", expect_digest=bf.digest_of(COMMENTED.encode()),
                            lock_timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 2
    finally:
        os.close(holder)
    assert str(info.value) == (f"cannot lock {lock} within 0.3 s: another program is changing the backends "
                               "file; nothing was changed. Try again.")
    assert isinstance(info.value, OSError)
    assert path.read_text() == COMMENTED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backends.yaml", "backends.yaml.lock"]


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock(1)")
def test_a_lock_held_by_another_process_is_waited_for(tmp_path):
    path = tmp_path / "backends.yaml"
    path.write_text(COMMENTED)
    holder = subprocess.Popen(["flock", str(path) + ".lock", "sleep", "0.4"])
    try:
        wait_until(lambda: _locked(str(path) + ".lock"), timeout=5, what="flock(1) holding the lock")
        started = time.monotonic()
        bf.atomic_write(str(path), "backends: {}\n", expect_digest=bf.digest_of(COMMENTED.encode()))
        assert time.monotonic() - started >= 0.1  # it waited for `flock` to let go
    finally:
        holder.wait(10)
    assert path.read_text() == "backends: {}\n"


def _locked(lock: str) -> bool:
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_flock_on_the_directory_no_longer_stalls_writes(tmp_path):
    path = tmp_path / "backends.yaml"
    path.write_text(COMMENTED)
    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # what any local user could hold on /etc/swarmd
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        bf.atomic_write(str(path), "backends: {}\n", expect_digest=bf.digest_of(COMMENTED.encode()),
                        lock_timeout=0.5)
    finally:
        os.close(directory)
    assert path.read_text() == "backends: {}\n"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_an_unprivileged_user_cannot_open_the_lock():
    directory = tempfile.mkdtemp(dir="/tmp")
    try:
        os.chmod(directory, 0o755)  # reachable by everyone, like /etc/swarmd
        path = os.path.join(directory, "backends.yaml")
        with open(path, "w") as handle:
            handle.write(COMMENTED)
        os.chmod(path, 0o664)
        bf.atomic_write(path, "backends: {}\n", expect_digest=bf.digest_of(COMMENTED.encode()))
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"]
        can_read = subprocess.run([*nobody, 'cat "$0" >/dev/null', path], capture_output=True, text=True)
        assert can_read.returncode == 0, can_read.stderr  # the file itself is world-readable...
        held = subprocess.run([*nobody, 'exec 3<"$0" && flock -n 3', path + ".lock"], capture_output=True,
                              text=True)
        assert held.returncode != 0 and "Permission denied" in held.stderr  # ...its lock is not
    finally:
        shutil.rmtree(directory)


def test_a_deleted_file_is_created_again_by_a_compare_and_swap_write(tmp_path):
    path = tmp_path / "backends.yaml"
    path.write_text(COMMENTED)
    base = bf.digest_of(path.read_bytes())
    path.unlink()
    bf.atomic_write(str(path), "backends: {}\n", expect_digest=base)
    assert path.read_text() == "backends: {}\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644 & ~_umask()
    assert stat.S_IMODE(os.stat(str(path) + ".lock").st_mode) == 0o600


def _umask() -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1], 8) for line in handle if line.startswith("Umask:"))
