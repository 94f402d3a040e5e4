"""The daemon's log output: a stderr that nobody reads never stalls the daemon, memory stays bounded, lost
text is reported, every line of a message is prefixed, backend output goes as one record per chunk.

Real pipes throughout; the daemon's own fd 2 is exercised in a child process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmd import logs
from swarmd.logs import StderrWriter

ROOT = Path(__file__).resolve().parents[2]
NOTICE = re.compile(r"swarmd: (\d+) bytes of log output were dropped \(stderr was not being read\)")
PLAIN = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (debug|info|warning|error|critical) +")


@contextlib.contextmanager
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)


def fill(fd: int) -> int:
    """Fill the pipe behind `fd` to the brim; returns how many bytes that took."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    total = 0
    try:
        while True:
            try:
                total += os.write(fd, b"f" * 4096)
            except BlockingIOError:
                return total
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


class Reader:
    """Reads a pipe to its end in a thread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while chunk := os.read(self.fd, 65536):
            self.data += chunk

    def result(self, timeout: float = 10) -> bytes:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the pipe was not closed"
        return bytes(self.data)


def test_writes_to_a_pipe_nobody_reads_return_at_once_and_memory_stays_bounded() -> None:
    with pipe() as (r, w):
        writer = StderrWriter(w)
        text = "x" * 990
        durations = []
        total = 0
        for index in range(10_000):
            line = f"{index:08d} {text}\n"
            total += len(line)
            start = time.perf_counter()
            writer.write(line)
            durations.append(time.perf_counter() - start)
            assert writer.queued_bytes <= writer.limit == logs.QUEUE_LIMIT
        assert sum(durations) < 2.0, sum(durations)
        assert sorted(durations)[len(durations) // 2] < 0.001  # the median write: well under a millisecond
        assert writer.dropped_bytes > total - logs.QUEUE_LIMIT - 1024 * 1024  # the pipe holds 64 KiB..1 MiB
        reader = Reader(r)  # now someone reads: the queue drains, then the notice
        assert writer.flush(10)
        writer.close()
        os.close(w)
        data = reader.result().decode()
    *lines, last = data.split("\n")
    assert last == ""
    # Text is lost where the queue was full (more than one place when the drain thread freed some room
    # in between); a notice stands at each place, and the counts add up.
    notices = [int(match[1]) for line in lines if (match := NOTICE.fullmatch(line))]
    assert notices and sum(notices) == writer.dropped_bytes
    written = [line for line in lines if not NOTICE.fullmatch(line)]
    numbers = [int(line[:8]) for line in written]
    assert numbers == sorted(set(numbers)) and all(line == f"{int(line[:8]):08d} {text}" for line in written)
    assert sum(len(line) + 1 for line in written) + writer.dropped_bytes == total


def test_flush_gives_up_after_its_timeout_while_the_pipe_stays_full() -> None:
    with pipe() as (r, w):
        writer = StderrWriter(w)
        fill(w)
        writer.write("y" * 1000 + "\n")
        start = time.monotonic()
        assert writer.flush(0.3) is False
        assert 0.25 <= time.monotonic() - start < 1.5
        assert writer.queued_bytes == 1001
        reader = Reader(r)
        assert writer.flush(10) is True
        assert writer.queued_bytes == 0
        writer.close()
        os.close(w)
        assert reader.result().endswith(b"y" * 1000 + b"\n")


def test_the_notice_stands_where_the_text_was_lost() -> None:
    with pipe() as (r, w):
        writer = StderrWriter(w, limit=100)
        filled = fill(w)
        writer.write("A" * 60 + "\n")  # accepted: the drain thread blocks on the full pipe with it
        writer.write("B" * 60 + "\n")  # 61 + 61 > 100: dropped
        writer.write("C\n")  # fits again: goes after a notice for the B line
        writer.write("D" * 99 + "\n")  # dropped: the notice comes last
        odd = "\udcff odd text is replaced, never raised" + "!" * 20 + "\n"
        writer.write(odd)  # dropped too (the queue is full)
        assert writer.queued_bytes == 63
        reader = Reader(r)
        assert writer.flush(10)
        writer.write("E\n")
        assert writer.flush(10)
        writer.close()
        os.close(w)
        data = reader.result()[filled:].decode()
    assert data.split("\n") == [
        "A" * 60,
        "swarmd: 61 bytes of log output were dropped (stderr was not being read)",
        "C",
        f"swarmd: {100 + len(odd.encode('utf-8', 'replace'))} bytes of log output were dropped "
        "(stderr was not being read)",
        "E",
        "",
    ]


def test_a_writer_whose_reader_is_gone_discards_quietly() -> None:
    with pipe() as (r, w):
        writer = StderrWriter(w)
        os.close(r)  # EPIPE from now on (Python ignores SIGPIPE)
        writer.write("lost\n")
        assert writer.flush(5)
        assert isinstance(writer.broken, BrokenPipeError)
        writer.write("also lost\n")
        assert writer.queued_bytes == 0 and writer.flush(0)


def record(message: str, level: int = logging.INFO, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("swarmd.test", level, __file__, 1, message, None,
                             exc_info)  # type: ignore[arg-type]


def test_every_line_of_a_message_gets_its_prefix() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failure = sys.exc_info()
    journal = logs.Formatter(journal=True)
    assert journal.format(record("one\ntwo", logging.WARNING)) == "<4>one\n<4>two"
    lines = journal.format(record("it failed", logging.ERROR, failure)).split("\n")
    assert lines[0] == "<3>it failed" and lines[-1] == "<3>ValueError: boom" and len(lines) > 3
    assert all(line.startswith("<3>") for line in lines)
    plain = logs.Formatter(journal=False)
    lines = plain.format(record("one\ntwo\n\nthree")).split("\n")
    assert [PLAIN.sub("", line) for line in lines] == ["one", "two", "", "three"]
    assert all(PLAIN.match(line) for line in lines)
    lines = plain.format(record("it failed", logging.ERROR, failure)).split("\n")
    assert all(PLAIN.match(line) for line in lines) and lines[-1].endswith(" error   ValueError: boom")
    assert plain.format(record("")) and PLAIN.match(plain.format(record("")))


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def backend_log() -> Iterator[tuple[logging.Logger, Capture]]:
    logger = logging.getLogger(logs.BACKEND_LOGGER)
    capture = Capture()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(capture)
    logger.propagate = False
    try:
        yield logger, capture
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
        logger.propagate = propagate


def test_forward_output_is_one_record_per_chunk(backend_log: tuple[logging.Logger, Capture]) -> None:
    logger, capture = backend_log
    logger.setLevel(logging.INFO)
    logs.forward_output("backend-3", "stdout", "ready on :8188\n100% done\n50%s %d")
    logs.forward_output("backend-4", "stderr", "\n".join(f"line {n}" for n in range(500)))
    logs.forward_output("backend-5", "stdout", "")
    assert len(capture.records) == 2
    first, second = capture.records
    assert (first.levelno, first.name, first.output_stream) == (logging.INFO, "swarmd.backend", "stdout")
    assert first.getMessage() == "backend-3: ready on :8188\nbackend-3: 100% done\nbackend-3: 50%s %d"
    assert second.output_stream == "stderr"
    assert second.getMessage().split("\n") == [f"backend-4: line {n}" for n in range(500)]
    logger.setLevel(logging.WARNING)
    logs.forward_output("backend-3", "stdout", "not logged")
    assert len(capture.records) == 2


def test_forward_output_through_the_writer_prefixes_every_line(
        backend_log: tuple[logging.Logger, Capture]) -> None:
    logger, capture = backend_log
    logger.setLevel(logging.INFO)
    with pipe() as (r, w):
        writer = StderrWriter(w)
        handler = logs.WriterHandler(writer)
        handler.setFormatter(logs.Formatter(journal=True))
        logger.addHandler(handler)
        try:
            logs.forward_output("backend-1", "stdout", "\n".join(f"out {n}" for n in range(500)))
        finally:
            logger.removeHandler(handler)
        assert writer.flush(10)
        writer.close()
        os.close(w)
        data = os.read(r, 1 << 20).decode()
    assert data.split("\n") == [f"<6>backend-1: out {n}" for n in range(500)] + [""]


def run_logging_child(script: str, *, journal: bool, read: bool = True,
                      timeout: float = 30) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run `script` after `logs.setup("debug")` with stderr on a pipe; its stdout and (when `read`) stderr."""
    code = f"import logging, sys, time\nfrom swarmd import logs\nlogs.setup('debug')\n{script}"
    with pipe() as (r, w):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("JOURNAL_STREAM", None)
        if journal:
            info = os.fstat(w)
            env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
        reader = Reader(r) if read else None
        done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=w, text=True,
                              env=env, timeout=timeout)
        os.close(w)
        return done, reader.result().decode() if reader is not None else ""


SCRIPT = """\
log = logging.getLogger("swarmd.test")
log.info("started\\nsecond line")
try:
    {}[1]
except KeyError:
    log.exception("lookup failed")
logs.forward_output("backend-2", "stdout", "a\\nb")
"""


@pytest.mark.parametrize("journal", [True, False])
def test_setup_logs_to_fd_2_with_a_prefix_on_every_line(journal: bool) -> None:
    done, err = run_logging_child(SCRIPT, journal=journal)
    assert done.returncode == 0, err
    lines = err.rstrip("\n").split("\n")
    if journal:
        assert lines[:3] == ["<6>started", "<6>second line", "<3>lookup failed"]
        assert all(line.startswith("<3>") for line in lines[2:-2])
        assert lines[-3:] == ["<3>KeyError: 1", "<6>backend-2: a", "<6>backend-2: b"]
    else:
        assert all(PLAIN.match(line) for line in lines), lines
        assert [PLAIN.sub("", line) for line in lines[:3]] == ["started", "second line", "lookup failed"]
        assert [PLAIN.sub("", line) for line in lines[-3:]] == ["KeyError: 1", "backend-2: a", "backend-2: b"]


def test_a_daemon_whose_stderr_nobody_reads_keeps_running_and_exits() -> None:
    script = (
        "log = logging.getLogger('swarmd.test')\n"
        "start = time.perf_counter()\n"
        "for n in range(20000):\n"
        "    log.info('record %d %s', n, 'z' * 400)\n"
        "print(time.perf_counter() - start, flush=True)\n"
    )
    start = time.monotonic()
    done, _ = run_logging_child(script, journal=False, read=False, timeout=20)
    assert done.returncode == 0
    assert float(done.stdout) < 5.0  # 20,000 records into a pipe that holds 64 KiB
    assert time.monotonic() - start < 10  # the exit flush gave up after its second
