"""`swarmd import` as a black box: SwarmUI's Data/Backends.fds (hand-written fixtures in
tests/fixtures/swarmui/<case>/) imported into a new file, into an existing file with comments and ids of
its own (kept; replaced with --replace), and as a dry run; every result passes `swarmd check`, and the
imported backends start under a real daemon (the fake ComfyUI placed where each StartScript points, in a
temp SwarmUI folder)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from swarmd import backends_file, fds, importer
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "swarmui"
FAKE_COMFY = ROOT / "tests" / "fake_comfyui" / "main.py"

#: What each fixture gives: the ids imported, those imported disabled for a refused value, the ids skipped,
#: the exit status, the ComfyUI scripts (relative to the SwarmUI folder), and each imported backend's
#: status under the daemon.
CASES = {
    "basic": dict(imported=[0, 1], refused=[], skipped=["2"], status=3,
                  scripts=["dlbackend/comfy/ComfyUI/main.py"], statuses={0: "running", 1: "disabled"}),
    "odd": dict(imported=[3, 4], refused=[4], skipped=["5"], status=3, scripts=["ComfyUI/main.py"],
                statuses={3: "running", 4: "disabled"}),
    "spaces": dict(imported=[10, 11], refused=[], skipped=[], status=0, scripts=["dlbackend/ComfyUI/main.py"],
                   statuses={10: "running", 11: "idle"}),
}


def swarmui_folder(tmp_path: Path, case: str) -> tuple[Path, Path]:
    """A SwarmUI folder holding the fixture's Data/Backends.fds, and the fake ComfyUI at each script path of
    the case (with a venv/bin/python3 beside it, as SwarmUI installs ComfyUI); (folder, .fds path)."""
    folder = tmp_path / "SwarmUI"
    (folder / "Data").mkdir(parents=True)
    source = folder / "Data" / "Backends.fds"
    shutil.copyfile(FIXTURES / case / "Data" / "Backends.fds", source)
    for script in CASES[case]["scripts"]:
        target = folder / script
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FAKE_COMFY, target)
        (target.parent / "venv" / "bin").mkdir(parents=True)
        (target.parent / "venv" / "bin" / "python3").symlink_to(sys.executable)
    return folder, source


def swarmd(*args: str | os.PathLike[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swarmd", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def do_import(source: Path, target: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return swarmd("import", "--from", source, "--backends", target, *flags)


def check_ok(target: Path) -> backends_file.BackendsFile:
    result = swarmd("check", "--backends", target)
    assert result.returncode == 0, result.stdout + result.stderr
    return backends_file.parse(str(target), target.read_bytes())


def wait_statuses(daemon, statuses: dict[int, str]) -> None:
    def reached() -> bool:
        listing = daemon.ok("ListBackends", {"full_data": True})
        return all(listing.get(str(backend_id), {}).get("status") == status
                   for backend_id, status in statuses.items())

    try:
        wait_until(reached, timeout=30, what=f"statuses {statuses}")
    except AssertionError:
        listing = daemon.ok("ListBackends", {"full_data": True})
        shown = {k: (v["status"], v.get("status_message")) for k, v in listing.items()}
        raise AssertionError(f"statuses {shown}, wanted {statuses}\n{daemon.log()}") from None


# -- into a new file ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_into_a_new_file_checks_and_starts(case, tmp_path, start_daemon):
    expected = CASES[case]
    folder, source = swarmui_folder(tmp_path, case)
    target = tmp_path / "etc" / "backends.yaml"
    target.parent.mkdir()
    result = do_import(source, target)
    assert result.returncode == expected["status"], result.stdout + result.stderr
    loaded = check_ok(target)
    assert sorted(loaded.backends) == expected["imported"]
    for backend_id in expected["skipped"]:
        assert f"backend {backend_id}: type " in result.stderr and ": skipped" in result.stderr
    for backend_id in expected["refused"]:
        assert loaded.backends[backend_id].enabled is False
        assert f"backend {backend_id}: settings." in result.stderr and "imported disabled" in result.stderr
    # every report line is located in the .fds
    for line in result.stderr.splitlines():
        assert line.startswith(f"{source}:"), line
    assert f"{target}: imported {len(expected['imported'])} of" in result.stdout
    # a relative StartScript became absolute, in the SwarmUI folder
    scripts = [b.settings["StartScript"] for b in loaded.backends.values() if b.type_id == "comfyui_selfstart"]
    assert scripts == [str(folder / script) for script in expected["scripts"]]

    daemon = start_daemon(None, directory=tmp_path, backends_path=target)
    wait_statuses(daemon, expected["statuses"])
    for backend_id, status in expected["statuses"].items():
        if status == "running" and loaded.backends[backend_id].type_id == "comfyui_selfstart":
            backend = daemon.backend(backend_id)
            cwd = Path(f"/proc/{backend['pid']}/cwd").resolve()
            assert cwd == (folder / expected["scripts"][0]).parent  # it runs in its ComfyUI folder
    daemon.finish()


def test_the_basic_fixture_comes_out_as_swarmui_had_it(tmp_path):
    folder, source = swarmui_folder(tmp_path, "basic")
    target = tmp_path / "backends.yaml"
    result = do_import(source, target)
    assert result.returncode == 3, result.stderr
    loaded = check_ok(target)
    comfy, remote = loaded.backends[0], loaded.backends[1]
    assert (comfy.type_id, comfy.title, comfy.enabled) == ("comfyui_selfstart", "main comfy", True)
    assert {name: comfy.settings[name] for name in (
        "StartScript", "ExtraArgs", "DisableInternalArgs", "AutoUpdate", "UpdateManagedNodes", "FrontendVersion",
        "EnablePreviews", "GPU_ID", "OverQueue", "AutoRestart")} == {
        "StartScript": str(folder / "dlbackend/comfy/ComfyUI/main.py"), "ExtraArgs": "--preview-method auto",
        "DisableInternalArgs": False, "AutoUpdate": "false", "UpdateManagedNodes": "false",
        "FrontendVersion": "LatestSwarmValidated", "EnablePreviews": "true", "GPU_ID": "0", "OverQueue": 1,
        "AutoRestart": True}
    assert (remote.type_id, remote.title, remote.enabled) == ("comfyui_api", "", False)
    assert {name: remote.settings[name] for name in ("Address", "AllowIdle", "OverQueue", "EnableFrontendDev")} == {
        "Address": "http://192.0.2.10:8188", "AllowIdle": True, "OverQueue": 1, "EnableFrontendDev": False}
    # only what SwarmUI had is written: swarmd's own settings keep their defaults by being absent
    text = target.read_text()
    assert "restart_delay" not in text and "python" not in text
    assert "GPU_ID: '0'" in text  # text stays text in YAML too
    assert f"{source}:26: backend 2: type 'swarmswarmbackend' has no swarmd equivalent" in result.stderr


def test_the_odd_fixture_reports_what_it_drops_and_refuses(tmp_path):
    _, source = swarmui_folder(tmp_path, "odd")
    target = tmp_path / "backends.yaml"
    result = do_import(source, target)
    assert result.returncode == 3
    loaded = check_ok(target)
    comfy, remote = loaded.backends[3], loaded.backends[4]
    assert comfy.title == "second: GPU "  # \c is a colon, \x guards the trailing space
    assert comfy.enabled is True  # no enabled line: true, as SwarmUI reads it
    assert (comfy.settings["AutoUpdate"], comfy.settings["EnablePreviews"], comfy.settings["AutoRestart"]) == (
        "aggressive", "taesd", False)
    assert remote.title == "42"  # a title that reads as a number stays text
    assert remote.enabled is False  # refused values: imported disabled, the rest kept
    assert remote.settings["Address"] == "http://192.0.2.11:8188"
    assert (remote.settings["AllowIdle"], remote.settings["OverQueue"]) == (False, 1)  # swarmd's defaults
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{source}:17: backend 3: settings: unknown setting 'LegacyFlag' for type "
                               "'comfyui_selfstart'") and line.endswith(": dropped") for line in lines)
    assert any(line.startswith(f"{source}:25: backend 4: settings.AllowIdle: refused: expected true or false, "
                               "got 'yes'") and line.endswith("imported disabled") for line in lines)
    assert any(line.startswith(f"{source}:26: backend 4: settings.OverQueue: refused: expected an integer, "
                               "got '1.0'") for line in lines)
    assert any(line.startswith(f"{source}:29: backend 5: type 'autoscalingbackend'") for line in lines)
    assert "1 disabled for a refused value (4); 1 skipped (5); 1 setting dropped" in result.stdout


# -- dry run ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_dry_run_prints_what_would_be_written_and_writes_nothing(case, tmp_path):
    _, source = swarmui_folder(tmp_path, case)
    target = tmp_path / "backends.yaml"
    dry = do_import(source, target, "--dry-run")
    assert dry.returncode == CASES[case]["status"], dry.stderr
    assert not target.exists()
    assert sorted(os.listdir(tmp_path)) == ["SwarmUI"]  # no temp file, no lock file
    assert "dry run: nothing written" in dry.stderr
    real = do_import(source, target)
    assert real.returncode == dry.returncode
    assert dry.stdout == target.read_text()  # exactly what the real import wrote
    # the same report, but for the summary
    assert dry.stderr.splitlines()[:-1] == real.stderr.splitlines()


# -- into an existing file -------------------------------------------------------------------------------------


def existing_file(ids: list[int]) -> str:
    """A hand-written file with comments that has the case's two ids (as other backends) and one of its own."""
    first, second = ids
    return f"""\
# the fleet before SwarmUI's backends came in; this comment stays
backends:
  {first}:                     # a web server that has SwarmUI's id
    type: process
    title: web
    enabled: true
    settings:
      command: python3 -m http.server --bind 127.0.0.1 {{port}}
      stop_timeout: 3
  # the remote ComfyUI, by hand
  {second}:
    type: comfyui_api
    title: by hand
    enabled: false
    settings:
      # an address nobody answers at
      Address: http://198.51.100.7:8188
      OverQueue: 4
      check_interval: 2
  99:
    type: process
    title: untouched   # a comment on an entry the import never touches
    enabled: false
    settings: {{command: sleep 100}}
# the end
"""


@pytest.mark.parametrize("case", sorted(CASES))
def test_existing_entries_are_kept_and_replaced_only_with_replace(case, tmp_path, start_daemon):
    expected = CASES[case]
    _, source = swarmui_folder(tmp_path, case)
    fresh = tmp_path / "fresh.yaml"
    do_import(source, fresh)
    imported = check_ok(fresh).backends

    target = tmp_path / "backends.yaml"
    original = existing_file(expected["imported"])
    target.write_text(original)
    kept = do_import(source, target)
    assert kept.returncode == 3, kept.stderr
    assert target.read_text() == original  # every id conflicts: nothing overwritten, not a byte
    for backend_id in expected["imported"]:
        assert (f"backend {backend_id}: the target already has a backend {backend_id}" in kept.stderr
                and "(--replace replaces it)" in kept.stderr)
    assert "imported 0 of" in kept.stdout

    replaced = do_import(source, target, "--replace")
    assert replaced.returncode == expected["status"], replaced.stderr
    loaded = check_ok(target)
    for backend_id in expected["imported"]:
        assert loaded.backends[backend_id] == imported[backend_id]  # exactly the imported backend
    assert loaded.backends[99] == backends_file.parse("x", original).backends[99]
    text = target.read_text()
    for line in original.splitlines():
        if line.lstrip().startswith("#") and "by hand" not in line and "nobody answers" not in line:
            assert line in text, line  # comments outside the replaced entries are kept
    assert "  99:\n    type: process\n    title: untouched   # a comment on an entry the import never" in text
    assert text.startswith("# the fleet before SwarmUI's backends came in; this comment stays\n")
    assert text.rstrip().endswith("# the end")

    daemon = start_daemon(None, directory=tmp_path, backends_path=target)
    wait_statuses(daemon, {**expected["statuses"], 99: "disabled"})
    daemon.finish()


def test_only_conflicting_ids_are_kept_the_others_are_added(tmp_path):
    _, source = swarmui_folder(tmp_path, "basic")
    target = tmp_path / "backends.yaml"
    original = existing_file([0, 7])
    target.write_text(original)
    result = do_import(source, target)
    assert result.returncode == 3
    loaded = check_ok(target)
    assert loaded.backends[0].type_id == "process" and loaded.backends[0].title == "web"
    assert loaded.backends[1].type_id == "comfyui_api"
    text = target.read_text()
    head = original[:original.index("# the end")]
    assert text.startswith(head)  # the new entry is added after the last one, nothing above it changes
    assert text.rstrip().endswith("# the end")


def test_a_running_daemon_starts_what_is_imported_into_its_file(tmp_path, start_daemon):
    _, source = swarmui_folder(tmp_path, "basic")
    target = tmp_path / "backends.yaml"
    daemon = start_daemon({99: {"title": "already there", "enabled": False, "settings": {"command": "sleep 100"}}})
    assert daemon.backends == target
    result = do_import(source, target)
    assert result.returncode == 3, result.stderr
    wait_statuses(daemon, {**CASES["basic"]["statuses"], 99: "disabled"})  # hot reload: no restart, no SIGHUP
    daemon.finish()


def test_swarmui_dir_names_the_folder_of_a_copied_fds(tmp_path):
    folder, source = swarmui_folder(tmp_path, "odd")
    copied = tmp_path / "Backends.fds"  # a copy of the file, away from its SwarmUI folder
    shutil.copyfile(source, copied)
    target = tmp_path / "backends.yaml"
    result = do_import(copied, target, "--swarmui-dir", folder)
    assert result.returncode == 3, result.stderr
    assert check_ok(target).backends[3].settings["StartScript"] == str(folder / "ComfyUI" / "main.py")
    assert "does not exist" not in result.stderr


# -- errors --------------------------------------------------------------------------------------------------


def test_a_missing_fds_is_an_error_naming_it(tmp_path):
    source = tmp_path / "SwarmUI" / "Data" / "Backends.fds"
    target = tmp_path / "backends.yaml"
    result = do_import(source, target)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == f"{source}:1: cannot read: No such file or directory"
    assert not target.exists()


def test_an_invalid_fds_is_an_error_naming_the_line_and_nothing_is_written(tmp_path):
    source = tmp_path / "Backends.fds"
    source.write_text("0:\n\ttype: comfyui_api\n\tsettings:\n\t\tAddress: http://127.0.0.1:8188\n  title: x\n")
    target = tmp_path / "backends.yaml"
    target.write_text("backends: {}\n")
    result = do_import(source, target)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{source}:5: indented 2 spaces, which matches no enclosing section")
    assert target.read_text() == "backends: {}\n"


def test_an_invalid_target_is_never_written(tmp_path):
    _, source = swarmui_folder(tmp_path, "spaces")
    target = tmp_path / "backends.yaml"
    target.write_text("backends:\n  0:\n    type: process\n    settings:\n      port: abc\n")
    before = target.read_bytes()
    result = do_import(source, target)
    assert result.returncode == 1
    assert f"{target}:5:7: settings.port" in result.stderr and f"{target}: invalid: nothing imported" in result.stderr
    assert target.read_bytes() == before


def test_an_empty_fds_imports_nothing_and_creates_nothing(tmp_path):
    source = tmp_path / "Backends.fds"
    source.write_text("# SwarmUI with no backends saved\n")
    target = tmp_path / "backends.yaml"
    result = do_import(source, target)
    assert result.returncode == 0, result.stderr
    assert not target.exists()
    assert "imported 0 of 0 backends" in result.stdout


def test_usage_errors_exit_2(tmp_path):
    assert swarmd("import", "--backends", tmp_path / "b.yaml").returncode == 2  # --from is required


# -- the conversion's rules, in process --------------------------------------------------------------------------


def convert(text: str) -> tuple[dict[int, importer.Candidate], list[str]]:
    candidates, reports = importer.convert(fds.loads(text, "B.fds"), "/srv/SwarmUI")
    return {c.id: c for c in candidates}, [f"{r.kind} {r.format('B.fds')}" for r in reports]


def test_entries_that_are_not_backends_are_skipped():
    candidates, reports = convert("abc:\n  type: comfyui_api\n007:\n  type: comfyui_api\n1: text\n"
                                  "2:\n  title: no type\n3:\n  type: comfyui_api\n  colour: red\n")
    assert list(candidates) == [3]
    assert reports == [
        "skipped B.fds:1: backend abc: not a backend id (a non-negative integer, as SwarmUI writes it): skipped",
        "skipped B.fds:3: backend 007: not a backend id (a non-negative integer, as SwarmUI writes it): skipped",
        "skipped B.fds:5: backend 1: expected a section (type, title, enabled, settings), got 'text': skipped",
        "skipped B.fds:6: backend 2: no type: skipped",
        "note B.fds:10: backend 3: unknown key 'colour' ignored, as SwarmUI ignores it (a backend has type, "
        "title, enabled, settings)",
    ]


def test_values_are_read_by_the_settings_kind_and_refusals_disable_the_backend():
    candidates, reports = convert(
        "0:\n  type: comfyui_selfstart\n  title: t\n  enabled: yes\n  settings:\n"
        "    StartScript: /opt/ComfyUI/run.py\n    OverQueue: -1\n    GPU_ID: auto\n    AutoRestart:\n"
        "    ExtraArgs:\n    - a\n    - b\n    EnablePreviews: sometimes\n    DisableInternalArgs: true\n")
    backend = candidates[0]
    assert backend.enabled is False and backend.refused
    assert backend.settings == {"GPU_ID": "auto", "DisableInternalArgs": True}
    kinds = [line.split(" ", 1)[0] for line in reports]
    assert kinds == ["refused", "refused", "refused", "note", "refused", "refused"]
    assert "B.fds:4: backend 0: enabled: expected true or false, got 'yes'" in reports[0]
    assert "settings.StartScript: refused: expected the path of ComfyUI's main.py" in reports[1]
    assert "settings.OverQueue: refused: must be at least 0, got -1: left at swarmd's default (1)" in reports[2]
    assert "settings.AutoRestart: empty: left at swarmd's default (true)" in reports[3]
    assert "settings.ExtraArgs: refused: expected one value, got a list" in reports[4]
    assert "settings.EnablePreviews: refused: expected one of 'false', 'true', 'taesd', got 'sometimes'" in reports[5]


def test_an_empty_text_setting_is_the_empty_text_and_absolute_scripts_stay():
    candidates, reports = convert("0:\n  type: comfyui_selfstart\n  settings:\n    StartScript: /opt/ComfyUI/main.py\n"
                                  "    ExtraArgs:\n    GPU_ID: \\x\n")
    assert candidates[0].settings == {"StartScript": "/opt/ComfyUI/main.py", "ExtraArgs": "", "GPU_ID": ""}
    assert candidates[0].enabled is True and candidates[0].title == ""
    assert reports == ["note B.fds:4: backend 0: settings.StartScript: '/opt/ComfyUI/main.py' does not exist "
                       "(yet): the backend will be errored when it starts"]
