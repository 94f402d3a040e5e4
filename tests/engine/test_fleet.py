"""The Fleet with real child processes, a real backends file on disk and the real guardian."""

from __future__ import annotations

import os
import signal
import sys
import urllib.request

import pytest
import trio

from swarmd.fleet import FleetError
from tests.helpers import alive, eventually, pids_with_arg, running, status

SLEEPER = f"{sys.executable} -c 'import time; time.sleep(600)'"


async def test_http_backend_becomes_running_and_serves(make_fleet):
    fleet = await make_fleet({0: {"settings": {
        "command": f"{sys.executable} -m http.server --bind 127.0.0.1 {{port}}",
        "ready_check": "http://127.0.0.1:{port}/"}}})
    await running(fleet, 0)
    port = fleet.get(0).lifecycle.port
    body = await trio.to_thread.run_sync(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/").status)
    assert body == 200
    assert any("Serving HTTP" in line.text for line in fleet.get(0).ring.tail(10))


async def test_sigkilled_backend_comes_back_with_a_new_pid(make_fleet):
    fleet = await make_fleet({0: {"settings": {"command": SLEEPER, "restart_delay": 0}}})
    first = await running(fleet, 0)
    os.kill(first, signal.SIGKILL)
    await eventually(lambda: fleet.get(0).pid not in (None, first) and status(fleet, 0) == "running")
    runtime = fleet.get(0).lifecycle
    assert runtime.restarts == 1
    assert runtime.last_exit.describe() == "killed by SIGKILL"


async def test_edit_writes_exactly_the_changed_line_and_restarts(make_fleet, tmp_path):
    fleet = await make_fleet({0: {"settings": {"command": SLEEPER, "stop_timeout": 5}},
                              1: {"settings": {"command": SLEEPER}}})
    pid0, pid1 = await running(fleet, 0), await running(fleet, 1)
    before = (tmp_path / "backends.yaml").read_text().splitlines()
    backend = await fleet.edit(0, title="b0", settings={"stop_timeout": "7"})
    after = (tmp_path / "backends.yaml").read_text().splitlines()
    assert [(a, b) for a, b in zip(before, after, strict=True) if a != b] == [
        ("      stop_timeout: 5", "      stop_timeout: 7")]
    assert backend.modcount == 1
    await eventually(lambda: fleet.get(0).pid not in (None, pid0), what="backend 0 restarted under a new pid")
    assert fleet.get(1).pid == pid1  # the other one is untouched


async def test_an_edit_always_restarts_as_swarmuis_save_does(make_fleet):
    fleet = await make_fleet({0: {"settings": {"command": SLEEPER}}})
    pid = await running(fleet, 0)
    backend = await fleet.edit(0, title="renamed", settings={})  # nothing but the title: restarted all the same
    assert (backend.title, backend.modcount, backend.status) == ("renamed", 1, "waiting")
    new = await eventually(lambda: fleet.get(0).pid not in (None, pid) and status(fleet, 0) == "running"
                           and fleet.get(0).pid)
    assert new != pid and not alive(pid)
    await fleet.edit(0, title="renamed", settings={"command": SLEEPER})  # the same settings: still restarted
    assert fleet.get(0).modcount == 2
    await eventually(lambda: fleet.get(0).pid not in (None, new) and status(fleet, 0) == "running")


async def test_bad_setting_is_refused_before_anything_changes(make_fleet, tmp_path):
    fleet = await make_fleet({0: {"settings": {"command": SLEEPER}}})
    pid = await running(fleet, 0)
    text = (tmp_path / "backends.yaml").read_bytes()
    with pytest.raises(FleetError, match="Invalid value for setting 'port': expected an integer, got 'abc'"):
        await fleet.edit(0, title="x", settings={"port": "abc"})
    with pytest.raises(FleetError, match="Invalid backend ID 9"):
        await fleet.edit(9, title="x", settings={})
    with pytest.raises(FleetError, match="Missing settings."):
        await fleet.edit(0, title="x", settings=None)  # type: ignore[arg-type]
    assert (tmp_path / "backends.yaml").read_bytes() == text
    assert fleet.get(0).pid == pid
    assert fleet.get(0).modcount == 0


async def test_invalid_file_on_disk_is_never_overwritten(make_fleet, tmp_path):
    fleet = await make_fleet({0: {"settings": {"command": SLEEPER}}})
    pid = await running(fleet, 0)
    path = tmp_path / "backends.yaml"
    broken = path.read_text().replace("enabled: true", "enabled: yes")
    path.write_text(broken)
    with pytest.raises(FleetError, match=r"backends file is invalid, fix it first: .*backends.yaml:5:14: backends.0.enabled"):
        await fleet.toggle(0, False)
    assert path.read_text() == broken
    assert fleet.get(0).pid == pid
    assert fleet.file_problem is not None


async def test_read_only_file_fails_the_mutation_with_state_intact(make_fleet, tmp_path):
    fleet = await make_fleet({0: {"settings": {"command": SLEEPER}}})
    pid = await running(fleet, 0)
    path = tmp_path / "backends.yaml"
    text = path.read_bytes()
    os.chmod(path, 0o444)
    with pytest.raises(FleetError, match="Could not write .*read-only.*Nothing was changed"):
        await fleet.edit(0, title="new title", settings={"stop_timeout": "1"})
    with pytest.raises(FleetError, match="Could not write"):
        await fleet.add("process")
    assert path.read_bytes() == text
    backend = fleet.get(0)
    assert (backend.title, backend.modcount, backend.pid) == ("b0", 0, pid)
    assert backend.settings["stop_timeout"] == 10.0
    assert [b.id for b in fleet.backends()] == [0]


async def test_add_delete_and_ids_never_collide(make_fleet, tmp_path):
    fleet = await make_fleet({0: {"settings": {"command": SLEEPER}}})
    added = await fleet.add("process")
    assert added.id == 1
    await eventually(lambda: added.status == "disabled", what="no command: disabled")
    assert "No command set" in added.status_message
    await fleet.edit(1, title="moved", settings={}, new_id=10)
    with pytest.raises(FleetError, match="Backend ID 0 is already in use."):
        await fleet.edit(10, title="x", settings={}, new_id=0)
    again = await fleet.add("process")
    assert again.id == 11  # new_id raised the next free id: no collision, ever
    assert await fleet.delete(11) is True
    assert await fleet.delete(11) is False
    third = await fleet.add("process")
    assert third.id == 12  # a deleted id is not reused
    with pytest.raises(FleetError, match="Invalid backend type: nope"):
        await fleet.add("nope")
    from swarmd import backends_file

    on_disk = backends_file.read(str(tmp_path / "backends.yaml"))
    assert list(on_disk.backends) == [0, 10, 12]


async def test_toggle_stops_and_starts(make_fleet, tmp_path):
    fleet = await make_fleet({0: {"settings": {"command": SLEEPER}}})
    pid = await running(fleet, 0)
    assert await fleet.toggle(0, False) is True
    assert status(fleet, 0) == "disabled"
    assert not alive(pid)
    assert "enabled: false" in (tmp_path / "backends.yaml").read_text()
    assert await fleet.toggle(0, False) is False
    assert await fleet.toggle(0, True) is True
    assert await running(fleet, 0) != pid
    with pytest.raises(FleetError, match="Invalid backend ID 5"):
        await fleet.toggle(5, True)


async def test_missing_program_is_errored_at_once_without_spinning(make_fleet):
    fleet = await make_fleet({0: {"settings": {"command": "/nonexistent/program --flag"}},
                              1: {"settings": {"command": SLEEPER, "cwd": "/nonexistent-dir"}}})
    await eventually(lambda: status(fleet, 0) == "errored" and status(fleet, 1) == "errored")
    assert fleet.get(0).status_message == "cannot start: program '/nonexistent/program' not found"
    assert fleet.get(1).status_message == "cannot start: working directory '/nonexistent-dir' does not exist"
    await trio.sleep(0.3)
    assert fleet.get(0).lifecycle.starts == 0 and fleet.get(0).lifecycle.restarts == 0


async def test_stop_kills_grandchildren(make_fleet):
    marker = f"swarmd-test-gc-{os.getpid()}"
    # sh starts a grandchild in the backend's group, then execs the main process
    fleet = await make_fleet({0: {"settings": {"command": (
        f"sh -c \"{sys.executable} -c 'import time; time.sleep(600)' {marker}-gc & "
        f"exec {sys.executable} -c 'import time; time.sleep(600)' {marker}-main\""), "stop_timeout": 5}}})
    pid = await running(fleet, 0)
    await eventually(lambda: pids_with_arg(f"{marker}-gc"), what="grandchild started")
    await eventually(lambda: pids_with_arg(f"{marker}-main") == [pid], what="sh exec'd the main process")
    await fleet.delete(0)
    assert pids_with_arg(f"{marker}-main") == []
    await eventually(lambda: not pids_with_arg(f"{marker}-gc"), timeout=2, what="grandchild gone")


async def test_crash_kills_leftover_grandchildren(make_fleet, tmp_path):
    marker = f"swarmd-test-crash-gc-{os.getpid()}"
    grandchild, up = tmp_path / "grandchild.py", tmp_path / "grandchild-up"
    grandchild.write_text("import os, sys, time\nprint('grandchild', os.getpid(), flush=True)\n"
                          "open(sys.argv[1], 'w').close()\ntime.sleep(600)\n")
    # the main process exits (status 3) only once its grandchild is up, leaving it behind in its group
    fleet = await make_fleet({0: {"settings": {"command": (
        f"sh -c \"{sys.executable} {grandchild} {up} {marker} & "
        f"while [ ! -e {up} ]; do sleep 0.02; done; exit 3\""), "restart": "never"}}})
    await eventually(lambda: status(fleet, 0) == "errored")
    assert fleet.get(0).status_message.startswith("exited with status 3 (restart: never; restart it once "
                                                  "fixed): grandchild ")
    said = await eventually(lambda: [line.text for line in fleet.get(0).ring.tail(10)
                                     if line.text.startswith("grandchild ")], what="the grandchild's pid")
    pid = int(said[0].split()[1])
    await eventually(lambda: not alive(pid) and not pids_with_arg(marker), timeout=2, what="grandchild gone")


async def test_restart_and_free_memory(make_fleet):
    handler = ("import signal, sys, time\n"
               "signal.signal(signal.SIGUSR1, lambda *a: print('freed', flush=True))\n"
               "print('up', flush=True)\n"
               "while True: time.sleep(1)\n")
    fleet = await make_fleet({0: {"settings": {"command": f"{sys.executable} -c \"{handler}\"",
                                               "ready_check": "log:^up$", "free_memory": "signal:SIGUSR1"}},
                              1: {"settings": {"command": SLEEPER}}})
    pid0, pid1 = await running(fleet, 0), await running(fleet, 1)
    assert await fleet.free_memory("all", system_ram=False) == (True, 1)
    await eventually(lambda: any(line.text == "freed" for line in fleet.get(0).ring.tail(5)))
    assert len(await fleet.restart("1")) == 1
    await eventually(lambda: fleet.get(1).pid not in (None, pid1) and status(fleet, 1) == "running")
    assert fleet.get(0).pid == pid0
    assert len(await fleet.restart("7")) == 0
    assert len(await fleet.restart("all")) == 2


async def test_mutations_are_refused_once_the_fleet_stops(make_fleet, tmp_path):
    fleet = await make_fleet({0: {"settings": {"command": SLEEPER}}})
    await running(fleet, 0)
    text = (tmp_path / "backends.yaml").read_bytes()
    await fleet.shutdown()
    with pytest.raises(FleetError, match="swarmd is stopping"):
        await fleet.add("process")
    with pytest.raises(FleetError, match="swarmd is stopping"):
        await fleet.restart("all")
    assert (tmp_path / "backends.yaml").read_bytes() == text


async def test_the_encoded_backend_object_equals_the_dict(make_fleet):
    import json

    from swarmd.api.shape import backend_json, backend_object

    fleet = await make_fleet({0: {"settings": {"command": SLEEPER}}, 1: {"enabled": False}})
    await running(fleet, 0)
    for backend in fleet.backends():
        for full in (False, True):
            assert json.loads(backend_json(backend, full)) == json.loads(json.dumps(backend_object(backend, full)))
    await fleet.edit(0, title="changed", settings={"stop_timeout": "3"})
    assert json.loads(backend_json(fleet.get(0)))["title"] == "changed"  # the cache follows the definition
    assert json.loads(backend_json(fleet.get(0)))["settings"]["stop_timeout"] == 3.0


async def test_the_encoded_runtime_facts_follow_every_change(make_fleet):
    """full_data's runtime part is kept encoded per backend between polls: a crash, a restart, a
    free-memory answer and a GPU refresh each show at the next poll."""
    import json

    from swarmd import gpu
    from swarmd.api.shape import backend_json, backend_object

    fleet = await make_fleet({0: {"settings": {"command": SLEEPER}}})
    await running(fleet, 0)
    backend = fleet.get(0)

    def shown() -> dict:
        answer = json.loads(backend_json(backend, True))
        assert answer == json.loads(json.dumps(backend_object(backend, True)))  # what a fresh build gives
        return answer

    first = shown()
    assert backend_json(backend, True) is not None and backend.api_runtime is not None
    cached = backend.api_runtime[-1]
    shown()
    assert backend.api_runtime[-1] is cached  # nothing changed: the same text, not encoded again
    os.kill(first["pid"], signal.SIGKILL)
    await eventually(lambda: backend.pid not in (None, first["pid"]) and status(fleet, 0) == "running")
    again = shown()
    assert again["pid"] == backend.pid and again["restarts"] == first["restarts"] + 1
    assert again["last_exit"] is not None
    backend.last_free = {"time": 1.5, "system_ram": False, "ok": True, "error": None}
    assert shown()["last_free"] == backend.last_free
    # A GPU refresh gives new figures (tests/unit/test_gpu.py): the cache is keyed on them too.
    assert backend.api_runtime[5] is gpu.figures_key()


async def test_a_deleted_backend_is_freed_by_reference_counting_alone(make_fleet):
    """The daemon freezes its start-up heap (gc.freeze): a Backend that needed the cycle collector to be
    freed would leak once deleted. Nothing of a stopped backend may hold it in a cycle."""
    import gc
    import weakref

    fleet = await make_fleet({0: {"settings": {"command": SLEEPER, "stop_timeout": 30}},
                              1: {"settings": {"command": SLEEPER}}})
    await running(fleet, 0)
    await running(fleet, 1)
    backend, shell = weakref.ref(fleet.get(0)), weakref.ref(fleet.get(0).shell)
    gc.disable()
    try:
        assert await fleet.delete(0) is True
        await eventually(lambda: backend() is None and shell() is None, timeout=5, what="backend 0 freed")
    finally:
        gc.enable()


async def test_targets_are_exactly_all_or_an_id_as_in_swarmui(make_fleet):
    fleet = await make_fleet({0: {"settings": {"command": SLEEPER}}, 1: {"settings": {"command": SLEEPER}}})
    await running(fleet, 0)
    await running(fleet, 1)
    for loose in ("", "ALL", "All", " 0", "0 ", "00", "+0"):
        assert await fleet.restart(loose) == [], loose
        assert await fleet.free_memory(loose) == (False, 0), loose
    assert len(await fleet.restart("0")) == 1
    await running(fleet, 0)
    assert len(await fleet.restart("all")) == 2


async def test_swarmuis_small_rules_for_add_and_edit(make_fleet):
    fleet = await make_fleet({0: {"settings": {"command": SLEEPER}}})
    added = await fleet.add("process")
    assert added.title == ""  # SwarmUI leaves a new backend's title empty
    edited = await fleet.edit(added.id, title="kept id", settings={}, new_id=-5)  # below 0: "keep it"
    assert (edited.id, edited.title) == (added.id, "kept id")
