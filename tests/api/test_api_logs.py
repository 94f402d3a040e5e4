"""The log routes as SwarmUI serves them (shared/reference/swarmui-logs.md), against real daemons whose
backends really print: the log list (six level logs, then one per backend), the answer's shape, SwarmUI's
web client polling pattern losing and repeating nothing, one sequence counter for every log, and the
daemon's own records in its level logs. Then the rings and the logging handler in-process."""

from __future__ import annotations

import json
import logging
import re
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import trio

from swarmd import logs
from swarmd.supervise import output
from swarmd.supervise.output import OutputRing
from tests.helpers import Daemon, wait_until

TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$")
MESSAGE_KEYS = {"sequence_id", "time", "message", "stream"}
LEVELS = [
    {"name": "Verbose", "color": "#606060", "identifier": ""},
    {"name": "Debug", "color": "#808080", "identifier": ""},
    {"name": "Info", "color": "#00FFFF", "identifier": ""},
    {"name": "Init", "color": "#00FF00", "identifier": ""},
    {"name": "Warning", "color": "#FFFF00", "identifier": ""},
    {"name": "Error", "color": "#FF0000", "identifier": ""},
]
LINES = 200


def printer(lines: int, *, stderr: bool = False, pause: float = 0.005) -> str:
    """A tiny child printing `line N` (and, with `stderr`, `err N` on stderr) `lines` times, then idling."""
    code = (f"import sys, time\nfor n in range({lines}):\n    print('line', n, flush=True)\n"
            + ("    print('err', n, file=sys.stderr, flush=True)\n" if stderr else "")
            + f"    time.sleep({pause})\ntime.sleep(600)\n")
    return f"{sys.executable} -u -c {shlex.quote(code)}"


def fake_comfy(tmp_path: Path, lines: int) -> dict:
    """A comfyui_selfstart backend whose main.py prints `line N` `lines` times (it never becomes ready:
    its output is all that matters here)."""
    script = tmp_path / "comfy" / "main.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"import time\nfor n in range({lines}):\n    print('line', n, flush=True)\n"
                      "    time.sleep(0.005)\ntime.sleep(600)\n")
    return {"type": "comfyui_selfstart", "title": "comfy",
            "settings": {"StartScript": str(script), "python": sys.executable, "GPU_ID": ""}}


def check_message(message: dict) -> None:
    assert set(message) == MESSAGE_KEYS, message
    assert isinstance(message["sequence_id"], int) and message["sequence_id"] > 0
    assert TIME.match(message["time"]), message
    assert isinstance(message["message"], str)
    assert message["stream"] in ("stdout", "stderr", "swarmd")


def log_of(daemon: Daemon, name: str) -> list[dict]:
    return daemon.ok("ListRecentLogMessages", {"types": [name], "last_sequence_ids": {}})["data"][name]


# -- the shapes ----------------------------------------------------------------------------------------------


def test_list_log_types_is_swarmuis_list(start_daemon, tmp_path: Path) -> None:
    daemon = start_daemon({
        5: {"settings": {"command": printer(1)}},
        0: fake_comfy(tmp_path, 1),
        3: {"type": "comfyui_api", "enabled": False, "settings": {"Address": "http://127.0.0.1:9"}},
        12: {"settings": {"command": ""}},
    })
    answer = daemon.ok("ListLogTypes", {"ignored": True})
    assert answer == {"types_available": [
        *LEVELS,
        {"name": "ComfyUI-0", "color": "#707070", "identifier": "backend-0"},
        {"name": "ComfyUI-API-3", "color": "#707070", "identifier": "backend-3"},
        {"name": "Process-5", "color": "#707070", "identifier": "backend-5"},
        {"name": "Process-12", "color": "#707070", "identifier": "backend-12"},
    ]}
    # Every ListRecentLogMessages answer carries the same list (SwarmUI's web client rebuilds its log list
    # from each one), whatever it asks for -- nothing known, nothing at all, no marks.
    for body in ({"types": []}, {"types": ["nothing"], "last_sequence_ids": {}},
                 {"types": ["Info", "ComfyUI-0"], "last_sequence_ids": {"Info": 0}, "lastSeqId": 7}):
        recent = daemon.ok("ListRecentLogMessages", body)
        assert set(recent) == {"types_available", "last_sequence_id", "data"}
        assert recent["types_available"] == answer["types_available"]
        assert isinstance(recent["last_sequence_id"], int)
    # A new backend is listed at once, in id order.
    daemon.ok("AddNewBackend", {"type_id": "process", "title": "new", "settings": {"command": ""}})
    names = [t["name"] for t in daemon.ok("ListRecentLogMessages", {"types": []})["types_available"]]
    assert names[6:] == ["ComfyUI-0", "ComfyUI-API-3", "Process-5", "Process-12", "Process-13"]


def test_messages_are_keyed_by_name_with_swarmuis_fields(start_daemon, tmp_path: Path) -> None:
    daemon = start_daemon({0: fake_comfy(tmp_path, 3), 1: {"settings": {"command": printer(3, stderr=True)}}})
    wait_until(lambda: len(log_of(daemon, "Process-1")) >= 6 and len(log_of(daemon, "ComfyUI-0")) >= 3,
               what="both backends' output")
    answer = daemon.ok("ListRecentLogMessages", {"types": ["ComfyUI-0", "Process-1", "Init", "Nope", "info"],
                                                  "last_sequence_ids": {}})
    assert set(answer["data"]) == {"ComfyUI-0", "Process-1", "Init"}  # unknown names are left out
    comfy, process = answer["data"]["ComfyUI-0"], answer["data"]["Process-1"]
    assert [m["message"] for m in comfy] == ["line 0", "line 1", "line 2"]
    assert {m["stream"] for m in comfy} == {"stdout"}
    by_stream = {stream: [m["message"] for m in process if m["stream"] == stream] for stream in ("stdout", "stderr")}
    assert by_stream == {"stdout": ["line 0", "line 1", "line 2"], "stderr": ["err 0", "err 1", "err 2"]}
    every = [m for messages in answer["data"].values() for m in messages]
    for message in every:
        check_message(message)
    for messages in answer["data"].values():
        seqs = [m["sequence_id"] for m in messages]
        assert seqs == sorted(seqs)
    # One counter for every log: no number twice, and last_sequence_id is the newest of them all.
    seqs = [m["sequence_id"] for m in every]
    assert len(set(seqs)) == len(seqs)
    assert answer["last_sequence_id"] >= max(seqs)
    # Local time, as SwarmUI's: the stamp of a line printed just now is now, to the second.
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    assert comfy[0]["time"][:10] == stamp[:10]
    # A backend log's identifier is an alias of its name, answered under the key the caller used; the
    # mark is looked up under that key too.
    alias = daemon.ok("ListRecentLogMessages", {"types": ["backend-1"], "last_sequence_ids": {}})
    assert alias["data"] == {"backend-1": process}
    alias = daemon.ok("ListRecentLogMessages", {"types": ["backend-1"],
                                                 "last_sequence_ids": {"backend-1": process[2]["sequence_id"]}})
    assert alias["data"] == {"backend-1": process[3:]}


# -- SwarmUI's web client polling ----------------------------------------------------------------------------


def test_polling_like_swarmuis_web_client_sees_every_line_once(start_daemon, tmp_path: Path) -> None:
    daemon = start_daemon({0: fake_comfy(tmp_path, LINES),
                           1: {"settings": {"command": printer(LINES, stderr=True)}}})
    available = daemon.ok("ListLogTypes")["types_available"]
    chosen = ["Info", "Warning", "ComfyUI-0", "Process-1"]
    seen: dict[str, list[dict]] = {name: [] for name in chosen}
    marks: dict[str, int] = {}
    body: dict = {"types": chosen}  # the first call: no last_sequence_ids
    calls_with_lines = 0
    newest = 0
    deadline = time.monotonic() + 30
    while True:
        answer = daemon.ok("ListRecentLogMessages", body)
        assert answer["types_available"] == available
        assert set(answer["data"]) == set(chosen)
        assert answer["last_sequence_id"] >= newest  # the counter never goes back
        newest = answer["last_sequence_id"]
        for name, messages in answer["data"].items():
            for message in messages:
                check_message(message)
                assert message["sequence_id"] <= newest
            if messages:
                seen[name] += messages
                marks[name] = messages[-1]["sequence_id"]  # per name: the last sequence id seen
        calls_with_lines += bool(answer["data"]["ComfyUI-0"])
        if len(seen["ComfyUI-0"]) >= LINES and len(seen["Process-1"]) >= 2 * LINES:
            break
        assert time.monotonic() < deadline, {name: len(messages) for name, messages in seen.items()}
        time.sleep(0.02)
        body = {"types": chosen, "last_sequence_ids": dict(marks), "lastSeqId": newest}
    # Every line exactly once, in order; nothing lost between calls (there were many of them).
    assert calls_with_lines >= 3
    assert [m["message"] for m in seen["ComfyUI-0"]] == [f"line {n}" for n in range(LINES)]
    process = seen["Process-1"]
    assert [m["message"] for m in process if m["stream"] == "stdout"] == [f"line {n}" for n in range(LINES)]
    assert [m["message"] for m in process if m["stream"] == "stderr"] == [f"err {n}" for n in range(LINES)]
    # Sequence ids strictly increase in each log, and no id is used by two logs.
    everything = [m["sequence_id"] for messages in seen.values() for m in messages]
    assert len(set(everything)) == len(everything)
    for messages in seen.values():
        seqs = [m["sequence_id"] for m in messages]
        assert all(a < b for a, b in zip(seqs, seqs[1:], strict=False))
    # Asked again from the start, each log is what the polls put together.
    again = daemon.ok("ListRecentLogMessages", {"types": ["ComfyUI-0", "Process-1"], "last_sequence_ids": {}})
    assert again["data"] == {"ComfyUI-0": seen["ComfyUI-0"], "Process-1": process}


def test_marks_missing_stale_and_long_polls(start_daemon) -> None:
    daemon = start_daemon({1: {"settings": {"command": printer(5)}}})
    full = wait_until(lambda: len(log := log_of(daemon, "Process-1")) == 5 and log, what="five lines")
    # No last_sequence_ids at all (SwarmUI would fail): every log from the start, as an absent name.
    assert daemon.ok("ListRecentLogMessages", {"types": ["Process-1"]})["data"]["Process-1"] == full
    assert daemon.ok("ListRecentLogMessages", {"types": ["Process-1"],
                                                "last_sequence_ids": {"Process-1": -1}})["data"]["Process-1"] == full
    # A mark above the counter comes from an earlier daemon: the log starts over, without waiting.
    started = time.monotonic()
    stale = daemon.ok("ListRecentLogMessages", {"types": ["Process-1"], "last_sequence_ids": {"Process-1": 10**12},
                                                "wait_seconds": 20})
    assert stale["data"]["Process-1"] == full and time.monotonic() - started < 10
    # A mark at the newest line: nothing, at once.
    last = full[-1]["sequence_id"]
    assert daemon.ok("ListRecentLogMessages", {"types": ["Process-1"],
                                                "last_sequence_ids": {"Process-1": last}})["data"] == {"Process-1": []}
    # wait_seconds (swarmd's) holds the answer until the log has a new line: a restart prints five more.
    with daemon.client(timeout=40) as client:
        def poll() -> dict:
            response = client.post("/API/ListRecentLogMessages", headers={"Content-Type": "application/json"},
                                   content=json.dumps({"types": ["Process-1"], "last_sequence_ids": {"Process-1": last},
                                                       "wait_seconds": 20}))
            return response.json()

        result: list[dict] = []
        waiter = threading.Thread(target=lambda: result.append(poll()))
        waiter.start()
        time.sleep(0.3)
        assert not result, "the long poll answered before there was anything new"
        daemon.ok("RestartBackends", {"backend": "1"})
        waiter.join(20)
    assert result and result[0]["data"]["Process-1"], result
    assert result[0]["data"]["Process-1"][0]["message"] == "line 0"
    assert all(m["sequence_id"] > last for m in result[0]["data"]["Process-1"])


# -- the daemon's own records ------------------------------------------------------------------------------


def test_the_daemons_own_messages_are_in_the_level_logs(start_daemon) -> None:
    failing = f"{sys.executable} -c \"print('bye'); raise SystemExit(3)\""
    daemon = start_daemon({0: {"settings": {"command": failing, "restart_delay": 0.05, "start_limit_burst": 2}},
                           1: {"settings": {"command": printer(1)}}})
    init = wait_until(lambda: [m for m in log_of(daemon, "Init") if m["message"].startswith("swarmd ready")],
                      what="swarmd ready in Init")
    assert init[0]["stream"] == "swarmd"
    warnings = wait_until(lambda: [m["message"] for m in log_of(daemon, "Warning")
                                   if m["message"].startswith("backend-0: ")], what="the first exit's warning")
    assert "restart 1 in" in warnings[0] and "bye" in warnings[0]  # with the last output
    errors = wait_until(lambda: [m["message"] for m in log_of(daemon, "Error") if "gave up" in m["message"]],
                        what="the start limit's error")
    assert errors[0].startswith("backend-0: ")
    # After "swarmd ready", INFO goes to Info: a reload's line, say.
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any(m["message"].startswith("SIGHUP: reloading") for m in log_of(daemon, "Info")),
               what="the reload's line in Info")
    assert not any(m["message"].startswith("SIGHUP") for m in log_of(daemon, "Init"))
    # Backends' output stays in their own logs (not copied into Info), and the daemon logs no debug at info.
    assert not any("line 0" in m["message"] for m in log_of(daemon, "Info") + log_of(daemon, "Init"))
    assert log_of(daemon, "Debug") == [] and log_of(daemon, "Verbose") == []
    # One counter for the level logs and the backends' logs alike.
    answer = daemon.ok("ListRecentLogMessages", {"types": ["Init", "Warning", "Error", "Info", "Process-0",
                                                           "Process-1"]})
    seqs = [m["sequence_id"] for messages in answer["data"].values() for m in messages]
    assert len(set(seqs)) == len(seqs) and max(seqs) <= answer["last_sequence_id"]


# -- in-process: the rings and the handler ------------------------------------------------------------------


def test_rings_share_one_counter_and_stay_bounded() -> None:
    first, second = OutputRing(3), OutputRing()
    start = output.last_sequence_id()
    a = first.append("stdout", "a")
    b = second.append("stderr", "b")
    c = first.append("stdout", "c")
    assert (a.seq, b.seq, c.seq) == (start + 1, start + 2, start + 3)
    assert output.last_sequence_id() == start + 3
    assert first.last_seq == c.seq and second.last_seq == b.seq
    assert first.since(a.seq) == [c] and first.since(b.seq) == [c] and first.since(c.seq) == []
    assert first.since(-1) == first.since(0) == [a, c]
    for n in range(5):
        first.append("stdout", f"x{n}")
    assert [line.text for line in first.since(0)] == ["x2", "x3", "x4"]  # bounded: the oldest fell off
    assert [line.text for line in first.since(c.seq)] == ["x2", "x3", "x4"]  # a mark before the kept ones
    assert [line.text for line in first.tail(2)] == ["x3", "x4"] and len(first) == 3


def test_appends_from_threads_keep_each_ring_in_order() -> None:
    rings = [OutputRing(100_000) for _ in range(2)]

    def work(n: int) -> None:
        for i in range(2000):
            rings[i % 2].append("swarmd", f"{n}-{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seqs = [[line.seq for line in ring.since(0)] for ring in rings]
    assert all(len(s) == 4000 and s == sorted(s) for s in seqs)
    assert len(set(seqs[0]) | set(seqs[1])) == 8000


async def test_a_worker_threads_append_wakes_a_follower() -> None:
    ring = OutputRing()
    mark = ring.append("stdout", "before").seq
    woke = trio.Event()

    async def follow() -> None:
        await ring.wait_after(mark)
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.sleep(0.05)
        assert not woke.is_set()
        await trio.to_thread.run_sync(ring.append, "swarmd", "from a thread")
        with trio.fail_after(5):
            await woke.wait()
    assert [line.text for line in ring.since(mark)] == ["from a thread"]


def test_the_ring_handler_files_records_by_level() -> None:
    handler = logs.RingHandler()
    start = output.last_sequence_id()
    tag = f"tag{start}"

    def emit(level: int, message: str, name: str = "swarmd.test", exc_info: object = None) -> None:
        handler.handle(logging.LogRecord(name, level, __file__, 1, message, None, exc_info))

    emit(logging.INFO, f"{tag} starting")
    emit(logging.WARNING, f"{tag} early warning")
    emit(logging.INFO, f"swarmd ready {tag}", name="swarmd.other")  # not the daemon's line
    emit(logging.INFO, f"swarmd ready {tag}", name="swarmd")
    emit(5, f"{tag} verbose")
    emit(logging.DEBUG, f"{tag} debug")
    emit(logging.INFO, f"{tag} info")
    emit(logging.WARNING, f"{tag} warning")
    emit(logging.ERROR, f"{tag} error")
    try:
        raise ValueError("boom")
    except ValueError:
        emit(logging.CRITICAL, f"{tag} critical", exc_info=sys.exc_info())
    emit(logging.INFO, f"{tag} backend output", name=logs.BACKEND_LOGGER)
    got = {level.name: [line.text for line in level.ring.since(start) if tag in line.text]
           for level in logs.LEVEL_LOGS}
    assert got["Init"] == [f"{tag} starting", f"swarmd ready {tag}", f"swarmd ready {tag}"]
    assert got["Verbose"] == [f"{tag} verbose"] and got["Debug"] == [f"{tag} debug"]
    assert got["Info"] == [f"{tag} info"]
    assert got["Warning"] == [f"{tag} early warning", f"{tag} warning"]
    assert got["Error"][0] == f"{tag} error"
    assert got["Error"][1].startswith(f"{tag} critical\nTraceback") and "ValueError: boom" in got["Error"][1]
    assert len(got["Error"]) == 2  # the backend's output is not copied
