"""Hot reload, end to end: a real daemon, real children, the real watcher, edits saved every common way."""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time

import pytest

from swarmd import backends_file
from tests.helpers import Daemon, api, backend_yaml, wait_socket, wait_until

SLEEP = f"{sys.executable} -c 'import time; time.sleep(600)'"


@pytest.fixture
def daemon(tmp_path):
    started: list[Daemon] = []

    def start(backends: dict[int, dict]) -> Daemon:
        d = Daemon(tmp_path, backend_yaml(backends))
        started.append(d)
        wait_socket(d.socket)
        return d

    yield start
    for d in started:
        d.stop(signal.SIGTERM)


def pids(d: Daemon) -> dict[int, int | None]:
    listing = api(d.socket, "ListBackends", {"full_data": True})
    return {int(k): v["pid"] for k, v in listing.items()}


def all_running(d: Daemon, count: int) -> dict[int, int]:
    def ready():
        listing = api(d.socket, "ListBackends", {"full_data": True})
        if len(listing) == count and all(v["status"] == "running" for v in listing.values()):
            return {int(k): v["pid"] for k, v in listing.items()}
        return None

    return wait_until(ready, what=f"{count} backends running")  # type: ignore[return-value]


def save_atomically(path, text: str) -> None:
    temp = f"{path}.tmp-{random.random()}"
    with open(temp, "w") as handle:
        handle.write(text)
    os.replace(temp, path)


def reloads(d: Daemon) -> int:
    return d.log().count("reloaded ")


def test_changing_one_setting_restarts_exactly_that_backend(daemon):
    d = daemon({i: {"settings": {"command": SLEEP}} for i in range(10)})
    before = all_running(d, 10)
    text = d.backends.read_text()
    editor = backends_file.Editor(str(d.backends), text)
    editor.set_backend(3, settings={"stop_timeout": 4})
    save_atomically(d.backends, editor.render())
    after = wait_until(lambda: (p := pids(d))[3] not in (None, before[3]) and p, what="backend 3 restarted")
    after = all_running(d, 10)
    assert after[3] != before[3]
    assert {k: v for k, v in after.items() if k != 3} == {k: v for k, v in before.items() if k != 3}
    listing = api(d.socket, "ListBackends")
    assert listing["3"]["modcount"] == 1 and listing["4"]["modcount"] == 0


def test_every_save_style_is_picked_up_and_touch_is_not(daemon, tmp_path):
    d = daemon({0: {"title": "t0", "settings": {"command": SLEEP}}})
    pid = all_running(d, 1)[0]

    def title() -> str:
        return api(d.socket, "ListBackends")["0"]["title"]

    def retitle(new: str) -> str:
        return d.backends.read_text().replace(f'title: "{title()}"', f'title: "{new}"')

    # 1. in-place write (truncate and write the same inode)
    text = retitle("in-place")
    with open(d.backends, "r+") as handle:
        handle.truncate(0)
        handle.write(text)
    wait_until(lambda: title() == "in-place", what="in-place save")
    # 2. atomic rename (most editors, `sed -i`)
    save_atomically(d.backends, retitle("renamed"))
    wait_until(lambda: title() == "renamed", what="atomic rename save")
    # 3. vim's rename-and-recreate: the old file becomes the backup, a new file is written
    text = retitle("vim")
    os.rename(d.backends, f"{d.backends}~")
    d.backends.write_text(text)
    os.unlink(f"{d.backends}~")
    wait_until(lambda: title() == "vim", what="vim-style save")
    # a title change never restarts the process
    assert pids(d)[0] == pid
    # 4. touch and the daemon's own write-back change nothing
    count = reloads(d)
    os.utime(d.backends)
    assert api(d.socket, "EditBackend", {"backend_id": 0, "title": "via-api", "settings": {}})["title"] == "via-api"
    time.sleep(0.6)
    assert reloads(d) == count
    assert pids(d)[0] == pid


def test_a_symlinked_file_whose_target_changes(tmp_path):
    real_dir = tmp_path / "managed"
    real_dir.mkdir()
    first = real_dir / "v1.yaml"
    first.write_text(backend_yaml({0: {"title": "one", "settings": {"command": SLEEP}}}))
    link = tmp_path / "backends.yaml"
    link.symlink_to(first)
    d = Daemon(tmp_path, backends_path=link)
    try:
        wait_socket(d.socket)
        all_running(d, 1)
        second = real_dir / "v2.yaml"
        second.write_text(backend_yaml({0: {"title": "two", "settings": {"command": SLEEP}}}))
        temp_link = tmp_path / "backends.yaml.new"
        temp_link.symlink_to(second)
        os.replace(temp_link, link)  # what config tools do: swap the link atomically
        wait_until(lambda: api(d.socket, "ListBackends")["0"]["title"] == "two", what="retargeted link")
        # and an edit of the new target is seen too (the watch followed the link)
        second.write_text(second.read_text().replace('"two"', '"three"'))
        wait_until(lambda: api(d.socket, "ListBackends")["0"]["title"] == "three", what="edit of new target")
        # the API writes through the link, keeping it a link
        api(d.socket, "EditBackend", {"backend_id": 0, "title": "four", "settings": {}})
        assert link.is_symlink() and 'title: "four"' in second.read_text()
    finally:
        d.stop(signal.SIGTERM)


def test_broken_yaml_keeps_running_and_refuses_mutations(daemon):
    d = daemon({0: {"settings": {"command": SLEEP}}, 1: {"settings": {"command": SLEEP}}})
    before = all_running(d, 2)
    good = d.backends.read_text()
    broken = good.replace("    settings:\n", "    settings: [\n", 1)
    save_atomically(d.backends, broken)
    d.wait_log(r"backends.yaml:\d+:\d+: YAML syntax")
    answer = api(d.socket, "EditBackend", {"backend_id": 0, "title": "x", "settings": {}})
    assert "backends file is invalid" in answer["error"] and "YAML syntax" in answer["error"]
    assert d.backends.read_text() == broken  # the person's text is never overwritten
    assert pids(d) == before
    fixed = good.replace('title: "b1"', 'title: "fixed"')
    save_atomically(d.backends, fixed)
    wait_until(lambda: api(d.socket, "ListBackends")["1"]["title"] == "fixed", what="the fix applied")
    assert api(d.socket, "EditBackend", {"backend_id": 0, "title": "ok", "settings": {}})["title"] == "ok"


def test_sighup_reloads_at_once(daemon):
    d = daemon({0: {"title": "a", "settings": {"command": SLEEP}}})
    all_running(d, 1)
    text = d.backends.read_text().replace('title: "a"', 'title: "hup"')
    # Write without the watcher noticing first is not possible to guarantee; SIGHUP must be harmless
    # either way and must apply the file when the watcher has not.
    d.backends.write_text(text)
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: api(d.socket, "ListBackends")["0"]["title"] == "hup")
    assert "SIGHUP: reloading" in d.log()


def test_api_mutations_racing_hand_edits_lose_nothing(daemon):
    d = daemon({0: {"settings": {"command": "sleep 600"}}})
    all_running(d, 1)
    api_ids: list[int] = []
    hand_ids: list[int] = []
    errors: list[str] = []

    def api_side() -> None:
        for _ in range(40):
            answer = api(d.socket, "AddNewBackend", {"type_id": "process"})
            if "error" in answer:
                errors.append(answer["error"])
            else:
                api_ids.append(int(answer["id"]))

    def hand_side() -> None:
        # A config tool adding entries: read, modify, save with an atomic rename -- holding the lock that
        # swarmd takes on the file's directory for its own writes (`flock DIR`), so neither side can
        # save over a version it did not read.
        import fcntl

        for i in range(40):
            new_id = 50000 - i
            fd = os.open(d.backends.parent, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                text = d.backends.read_text() + f"  {new_id}:\n    type: process\n    title: hand-{i}\n"
                save_atomically(d.backends, text)
            finally:
                os.close(fd)
            hand_ids.append(new_id)
            time.sleep(random.uniform(0, 0.01))

    threads = [threading.Thread(target=api_side), threading.Thread(target=hand_side)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    # A mutation may be refused when the file keeps changing under it -- with a clear error, and then it
    # changed nothing. Every acknowledged one must be in the file.
    assert all("kept changing on disk" in e and "nothing was changed" in e for e in errors), errors
    assert len(api_ids) + len(errors) == 40
    final = backends_file.read(str(d.backends))
    on_disk = set(final.backends)
    assert set(api_ids) <= on_disk, f"API changes lost: {set(api_ids) - on_disk}"
    assert set(hand_ids) <= on_disk, f"hand edits lost: {set(hand_ids) - on_disk}"
    assert len(hand_ids) == 40 and len(api_ids) >= 20
    wait_until(lambda: {int(k) for k in api(d.socket, "ListBackends")} == on_disk, what="daemon = file")


async def test_the_polling_fallback_sees_a_save(tmp_path, monkeypatch):
    """Where inotify is exhausted, watchfiles polls the directory instead (slower, still correct)."""
    import trio

    from swarmd import reload

    def no_inotify() -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(reload, "Inotify", no_inotify)
    path = tmp_path / "backends.yaml"
    path.write_text("backends: {}\n")
    seen = trio.Event()

    async def on_change() -> None:
        seen.set()

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(reload.watch_file, str(path), on_change, stop)
        with trio.fail_after(15):
            n = 0
            while not seen.is_set():  # saves until the poller (first snapshot taken when it gets to it) sees one
                n += 1
                save_atomically(path, f"backends:\n  {n}: {{type: process}}\n")
                with trio.move_on_after(1):
                    await seen.wait()
        stop.set()


async def test_a_save_in_progress_is_not_read_until_the_writer_closes_it(tmp_path):
    """A half-written file can parse as a valid, truncated fleet: only a finished save counts."""
    import trio

    from swarmd import reload

    path = tmp_path / "backends.yaml"
    path.write_text("backends: {}\n")
    calls = []

    async def on_change() -> None:
        calls.append(path.read_text())

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(reload.watch_file, str(path), on_change, stop)
        with open(path, "w") as handle:  # an editor writing in place, slowly
            handle.write("backends:\n  0: {type: process}\n")
            handle.flush()
            await trio.sleep(0.3)
            assert calls == []
            handle.write("  1: {type: process}\n")
        with trio.fail_after(10):
            while not calls:
                await trio.sleep(0.01)
        assert calls == ["backends:\n  0: {type: process}\n  1: {type: process}\n"]
        os.utime(path)  # a touch is no save
        await trio.sleep(0.2)
        assert len(calls) == 1
        stop.set()
