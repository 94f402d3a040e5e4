"""Hot reload, end to end: a real daemon, real children, the real watcher, edits saved every common way."""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time

from swarmd import backends_file
from tests.helpers import Daemon, backend_yaml, eventually, wait_until

SLEEP = f"{sys.executable} -c 'import time; time.sleep(600)'"


def pids(d: Daemon) -> dict[int, int | None]:
    listing = d.ok("ListBackends", {"full_data": True})
    return {int(k): v["pid"] for k, v in listing.items()}


def all_running(d: Daemon, count: int) -> dict[int, int]:
    def ready():
        listing = d.ok("ListBackends", {"full_data": True})
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


def test_changing_one_setting_restarts_exactly_that_backend(start_daemon):
    d = start_daemon({i: {"settings": {"command": SLEEP}} for i in range(10)})
    before = all_running(d, 10)
    text = d.backends.read_text()
    editor = backends_file.Editor(str(d.backends), text)
    editor.set_backend(3, settings={"stop_timeout": 4})
    save_atomically(d.backends, editor.render())
    wait_until(lambda: pids(d)[3] not in (None, before[3]), what="backend 3 restarted")
    after = all_running(d, 10)
    assert after[3] != before[3]
    assert {k: v for k, v in after.items() if k != 3} == {k: v for k, v in before.items() if k != 3}
    listing = d.ok("ListBackends")
    assert listing["3"]["modcount"] == 1 and listing["4"]["modcount"] == 0


def test_every_save_style_is_picked_up_and_touch_is_not(start_daemon):
    d = start_daemon({0: {"title": "t0", "settings": {"command": SLEEP}}})
    pid = all_running(d, 1)[0]

    def title() -> str:
        return d.ok("ListBackends")["0"]["title"]

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
    # 4. touch and the daemon's own write-back change nothing. The log is written in order, through a
    # queue: once the line of an API edit is in the file, so is every reload before it. (An API edit
    # restarts the backend, as SwarmUI's Save does; a reload of its own write changes nothing more.)
    assert d.ok("EditBackend", {"backend_id": 0, "title": "via-api", "settings": {}})["title"] == "via-api"
    d.wait_log(r"edited backend-0")
    count = reloads(d)
    os.utime(d.backends)
    assert d.ok("EditBackend", {"backend_id": 0, "title": "via-api-2", "settings": {}})["title"] == "via-api-2"
    d.wait_log(r"edited backend-0", count=2)
    pid = all_running(d, 1)[0]
    time.sleep(0.6)  # a reload either of them caused would have come by now
    assert reloads(d) == count
    assert pids(d)[0] == pid
    # and the watcher still sees a real save after them: exactly one reload more
    save_atomically(d.backends, retitle("after"))
    wait_until(lambda: title() == "after", what="the save after the touch")
    wait_until(lambda: reloads(d) >= count + 1, what="its reload logged")
    assert reloads(d) == count + 1


def test_a_symlinked_file_whose_target_changes(tmp_path, start_daemon):
    real_dir = tmp_path / "managed"
    real_dir.mkdir()
    first = real_dir / "v1.yaml"
    first.write_text(backend_yaml({0: {"title": "one", "settings": {"command": SLEEP}}}))
    link = tmp_path / "backends.yaml"
    link.symlink_to(first)
    d = start_daemon(None, backends_path=link)
    all_running(d, 1)
    second = real_dir / "v2.yaml"
    second.write_text(backend_yaml({0: {"title": "two", "settings": {"command": SLEEP}}}))
    temp_link = tmp_path / "backends.yaml.new"
    temp_link.symlink_to(second)
    os.replace(temp_link, link)  # what config tools do: swap the link atomically
    wait_until(lambda: d.ok("ListBackends")["0"]["title"] == "two", what="retargeted link")
    # and an edit of the new target is seen too (the watch followed the link)
    second.write_text(second.read_text().replace('"two"', '"three"'))
    wait_until(lambda: d.ok("ListBackends")["0"]["title"] == "three", what="edit of new target")
    # the API writes through the link, keeping it a link
    d.ok("EditBackend", {"backend_id": 0, "title": "four", "settings": {}})
    assert link.is_symlink() and 'title: "four"' in second.read_text()


def test_broken_yaml_keeps_running_and_refuses_mutations(start_daemon):
    d = start_daemon({0: {"settings": {"command": SLEEP}}, 1: {"settings": {"command": SLEEP}}})
    before = all_running(d, 2)
    good = d.backends.read_text()
    broken = good.replace("    settings:\n", "    settings: [\n", 1)
    save_atomically(d.backends, broken)
    d.wait_log(r"backends.yaml:\d+:\d+: YAML syntax")
    answer = d.api("EditBackend", {"backend_id": 0, "title": "x", "settings": {}})
    assert "backends file is invalid" in answer["error"] and "YAML syntax" in answer["error"]
    assert d.backends.read_text() == broken  # the person's text is never overwritten
    assert pids(d) == before
    fixed = good.replace('title: "b1"', 'title: "fixed"')
    save_atomically(d.backends, fixed)
    wait_until(lambda: d.ok("ListBackends")["1"]["title"] == "fixed", what="the fix applied")
    assert d.ok("EditBackend", {"backend_id": 0, "title": "ok", "settings": {}})["title"] == "ok"


def test_sighup_reloads_at_once(start_daemon):
    d = start_daemon({0: {"title": "a", "settings": {"command": SLEEP}}})
    all_running(d, 1)
    text = d.backends.read_text().replace('title: "a"', 'title: "hup"')
    # The new text is written in place and the file kept open: the watcher waits for the writer to close
    # it (see test_a_save_in_progress_is_not_read_until_the_writer_closes_it), so only SIGHUP can apply it.
    with open(d.backends, "w") as handle:
        handle.write(text)
        handle.flush()
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: d.ok("ListBackends")["0"]["title"] == "hup", what="the file applied by SIGHUP")
    d.wait_log("SIGHUP: reloading")


def test_api_mutations_racing_hand_edits_lose_nothing(start_daemon):
    d = start_daemon({0: {"settings": {"command": "sleep 600"}}})
    all_running(d, 1)
    api_ids: list[int] = []
    hand_ids: list[int] = []
    errors: list[str] = []

    def api_side() -> None:
        for _ in range(40):
            answer = d.api("AddNewBackend", {"type_id": "process"})
            if "error" in answer:
                errors.append(answer["error"])
            else:
                api_ids.append(int(answer["id"]))

    def hand_side() -> None:
        # A config tool adding entries: read, modify, save with an atomic rename -- holding the lock that
        # swarmd takes for its own writes (`flock backends.yaml.lock`), so neither side can
        # save over a version it did not read.
        import fcntl

        for i in range(40):
            new_id = 50000 - i
            fd = os.open(f"{d.backends}.lock", os.O_RDWR | os.O_CREAT, 0o600)
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
    wait_until(lambda: {int(k) for k in d.ok("ListBackends")} == on_disk, what="daemon = file")


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
        await eventually(lambda: calls, timeout=10, what="the finished save read")
        assert calls == ["backends:\n  0: {type: process}\n  1: {type: process}\n"]
        os.utime(path)  # a touch is no save
        await trio.sleep(0.2)
        assert len(calls) == 1
        stop.set()
