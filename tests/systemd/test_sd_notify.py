"""swarmd.systemd's pure parts and its datagrams, against a real datagram socket (no systemd needed)."""

from __future__ import annotations

import os
import socket
import time

import pytest
import trio

from swarmd import systemd
from tests.systemd.notify_listener import NotifyListener


@pytest.fixture
def listener(tmp_path):
    listening = NotifyListener(str(tmp_path / "notify.sock"))
    yield listening
    listening.close()


def test_notify_address_forms():
    assert systemd.notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert systemd.notify_address({"NOTIFY_SOCKET": "@abstract/x"}) == "\0abstract/x"
    assert systemd.notify_address({}) is None
    assert systemd.notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None


def test_without_notify_socket_every_send_is_a_quiet_no_op():
    notifier = systemd.Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.ready("1 running") is False
    assert notifier.watchdog() is False


def test_messages_arrive_as_one_datagram_each(listener):
    notifier = systemd.Notifier.from_environ({"NOTIFY_SOCKET": listener.address})
    assert notifier.ready("2 running,\n1 errored")
    assert notifier.reloading()
    assert notifier.stopping("stopping: 2 running")
    assert notifier.watchdog()
    listener.wait_for(lambda f: "WATCHDOG" in f)
    messages = [fields for _, fields in listener.snapshot()]
    assert messages[0] == {"READY": "1", "STATUS": "2 running, 1 errored"}  # one line, never two fields
    assert messages[1]["RELOADING"] == "1"
    usec = int(messages[1]["MONOTONIC_USEC"])
    assert abs(usec - monotonic_usec()) < 5_000_000
    assert messages[2] == {"STOPPING": "1", "STATUS": "stopping: 2 running"}
    assert messages[3] == {"WATCHDOG": "1"}


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_abstract_namespace_socket():
    name = f"@swarmd-test-{os.getpid()}"
    listener = NotifyListener(name)
    try:
        assert systemd.Notifier.from_environ({"NOTIFY_SOCKET": name}).ready()
        listener.wait_for(lambda f: f.get("READY") == "1")
    finally:
        listener.close()


def test_a_notify_socket_nobody_reads_does_not_raise(tmp_path, caplog):
    notifier = systemd.Notifier(str(tmp_path / "gone.sock"))
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert len([r for r in caplog.records if "cannot notify systemd" in r.getMessage()]) == 1  # said once


def test_status_line():
    assert systemd.status_line({"errored": 1, "running": 3, "loading": 1}) == "3 running, 1 loading, 1 errored"
    assert systemd.status_line({"running": 2, "disabled": 0, "zzz": 1}) == "2 running, 1 zzz"
    assert systemd.status_line({}) == "no backends"
    assert systemd.status_line({"running": 1}, phase="stopping") == "stopping: 1 running"
    assert "invalid" in systemd.status_line({"running": 1}, file_problem="x.yaml:1:1: bad")


def test_watchdog_interval_is_half_of_watchdog_usec_and_honours_watchdog_pid():
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid=42) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"}, pid=42) is None
    assert systemd.watchdog_interval({}, pid=42) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "0"}, pid=42) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "soon"}, pid=42) is None


def test_listen_fds_only_for_our_pid():
    pid = os.getpid()
    assert systemd.listen_fds({"LISTEN_PID": str(pid + 1), "LISTEN_FDS": "1"}) == []
    assert systemd.listen_fds({}) == []
    assert systemd.listen_fds({"LISTEN_PID": str(pid), "LISTEN_FDS": "x"}) == []


def test_activated_socket_is_checked_and_made_close_on_exec(tmp_path):
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(tmp_path / "api.sock"))
    listening.listen()
    datagram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        os.set_inheritable(listening.fileno(), True)  # as systemd passes it: no FD_CLOEXEC
        fd = listening.fileno()
        assert systemd.activated_socket([]) is None
        assert systemd.activated_socket([fd]) == (fd, str(tmp_path / "api.sock"))
        with pytest.raises(systemd.ActivationError, match="not a stream socket"):
            systemd.activated_socket([datagram.fileno()])
        with open(tmp_path / "file", "w") as handle, pytest.raises(systemd.ActivationError, match="not a socket"):
            systemd.activated_socket([handle.fileno()])
    finally:
        listening.close()
        datagram.close()


async def test_status_reporter_sends_changes_at_most_every_interval(autojump_clock):  # pytest-trio's clock
    sent: list[str] = []

    class Recorder(systemd.Notifier):
        enabled = True  # as under systemd

        def __init__(self) -> None:
            super().__init__(None)

        def status(self, text: str) -> bool:
            sent.append(text)
            return True

    state = {"text": "1 loading"}
    reporter = systemd.StatusReporter(Recorder(), lambda: state["text"], interval=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(reporter.run)
        reporter.changed()
        await trio.sleep(0.01)
        assert sent == ["1 loading"]  # the first change goes out at once
        # a burst of changes inside one interval: only the last text is sent, once
        for text in ("1 waiting", "1 loading", "1 running"):
            state["text"] = text
            reporter.changed()
            await trio.sleep(0.02)
        assert sent == ["1 loading"]
        await trio.sleep(0.1)
        assert sent == ["1 loading", "1 running"]
        reporter.changed()  # nothing changed in the text: nothing is sent
        await trio.sleep(0.5)
        assert sent == ["1 loading", "1 running"]
        nursery.cancel_scope.cancel()


async def test_without_systemd_the_status_is_never_described(autojump_clock):
    described: list[int] = []
    reporter = systemd.StatusReporter(systemd.Notifier(None), lambda: str(described.append(1)), interval=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(reporter.run)
        for _ in range(5):
            reporter.changed()
            await trio.sleep(0.2)
    assert described == []  # (describe() walks every backend: no work for nobody)
