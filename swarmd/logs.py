"""The daemon's log output: plain timestamped lines, or journald's `<N>` priority prefix under systemd --
written to stderr by a thread of its own, so that a reader who stops reading never stalls the daemon.

Theory of operation
-------------------
* Everything the daemon logs, and every line its backends print (`forward_output`), ends on fd 2. A write
  to a pipe blocks once the pipe is full (64 KiB): when journald or whoever reads our stderr stops
  reading, a synchronous write on the event loop would freeze the API, the restarts and the watchdog
  pings. So no log call writes: `StderrWriter.write` appends the encoded text to a bounded in-memory
  queue (`QUEUE_LIMIT`) and returns, and one daemon thread drains the queue to the fd with blocking
  writes.
* When the queue is full, new text is dropped and counted; once the fd drains again, one line says how many
  bytes were lost, at the place where they were lost. Memory stays bounded whatever the reader does.
* At exit, queued text gets `EXIT_FLUSH_SECONDS` to reach the fd, then the process exits anyway.
* Format: systemd sets JOURNAL_STREAM=<dev>:<inode> for the stream it connected to stderr; when it matches
  our stderr, each line starts with a syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug)
  and no timestamp (the journal keeps its own); otherwise each line starts with
  `YYYY-mm-dd HH:MM:SS.mmm level `. Every line of a multi-line message (a traceback, a chunk of backend
  output) gets the prefix.
* The level logs (`LEVEL_LOGS`): the log routes show the daemon's own records as SwarmUI shows its own, in
  six logs named after SwarmUI's levels -- `Verbose`, `Debug`, `Info`, `Init`, `Warning`, `Error` -- each a
  bounded ring (`LEVEL_LOG_LINES`) that shares its sequence numbers with the backends' output rings
  (`swarmd.supervise.output`). `RingHandler` files each record by its Python level: below DEBUG ->
  Verbose, DEBUG -> Debug, INFO -> Info, WARNING -> Warning, ERROR and above -> Error; except that INFO
  records logged during start-up, up to and including the daemon's "swarmd ready" line, go to Init
  (start-up warnings and errors stay in Warning and Error, where one looks for them). A level log holds
  what the daemon logs at its `log_level` (Debug is empty unless it is `debug`). Backends' output
  (`forward_output`) is left out: it is in each backend's own log already, and a chatty backend would
  push the daemon's messages out of the Info ring. The handler only appends to memory: it never blocks,
  from the trio thread or a worker thread.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from swarmd.supervise.output import OutputRing

_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}
#: The most bytes of log text held in memory while stderr is not being read.
QUEUE_LIMIT = 4 * 1024 * 1024
#: How long queued log text may take to reach stderr when the process exits.
EXIT_FLUSH_SECONDS = 1.0
#: How long the writer thread lets text gather after it is woken, before it writes (see `StderrWriter`).
COALESCE_SECONDS = 0.01
#: The logger that carries backends' output.
BACKEND_LOGGER = "swarmd.backend"

#: The most records each level log keeps.
LEVEL_LOG_LINES = 1000
#: The daemon's last start-up line (its logger, the start of its text): INFO records up to it go to the
#: Init log, later ones to Info.
READY_LOGGER, READY_MESSAGE = "swarmd", "swarmd ready"

_backend_log = logging.getLogger(BACKEND_LOGGER)


@dataclass(frozen=True, eq=False)
class LevelLog:
    """One of the daemon's level logs: SwarmUI's name and colour, and its ring."""

    name: str
    color: str
    ring: OutputRing


#: SwarmUI's six level logs, in its order, with its colours.
LEVEL_LOGS: tuple[LevelLog, ...] = tuple(
    LevelLog(name, color, OutputRing(LEVEL_LOG_LINES))
    for name, color in (("Verbose", "#606060"), ("Debug", "#808080"), ("Info", "#00FFFF"),
                        ("Init", "#00FF00"), ("Warning", "#FFFF00"), ("Error", "#FF0000")))
_VERBOSE, _DEBUG, _INFO, _INIT, _WARNING, _ERROR = LEVEL_LOGS


def dropped_notice(count: int) -> str:
    """The line written where log text was lost."""
    return f"swarmd: {count} bytes of log output were dropped (stderr was not being read)\n"


class StderrWriter:
    """Owns a file descriptor (fd 2 for the daemon's log) and writes text to it without ever blocking the
    caller.

    `write` queues and returns at once; a daemon thread makes the (blocking) writes, of everything queued
    within `COALESCE_SECONDS` of the text that woke it. Queued and in-flight
    bytes together never exceed `limit`: beyond it, text is dropped and counted, and a notice line
    (`notice(count)`, default `dropped_notice`) takes the place of what was dropped. A write error other
    than EAGAIN (EPIPE: nobody will ever read; EBADF) makes the writer discard everything from then on.
    """

    def __init__(self, fd: int = 2, limit: int = QUEUE_LIMIT,
                 notice: Callable[[int], str] = dropped_notice) -> None:
        self.fd = fd
        self.limit = limit
        self.notice = notice
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the drain thread waits here for text
        self._drained = threading.Condition(self._lock)  # flush() waits here for the queue to empty
        # Each item: encoded text, or an int -- the count of bytes dropped at that place.
        self._queue: collections.deque[bytes | int] = collections.deque()
        self._queued = 0  # bytes of text queued or being written
        self._writing = False  # the drain thread has a batch in hand
        self._dropped = 0  # bytes dropped since the last item queued (not yet in the queue)
        self._dropped_total = 0
        self._broken: OSError | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._drain, name=f"swarmd log writer (fd {fd})", daemon=True)
        self._thread.start()

    @property
    def queued_bytes(self) -> int:
        """Bytes of text accepted and not yet written (queued or being written); at most `limit`."""
        return self._queued

    @property
    def dropped_bytes(self) -> int:
        """Bytes of text dropped since the writer was made (the queue was full, or the fd is broken)."""
        return self._dropped_total

    @property
    def broken(self) -> OSError | None:
        """The error that made the fd unusable, or None."""
        return self._broken

    def write(self, text: str) -> None:
        """Queue `text` (encoded UTF-8, odd characters replaced) for the fd. Never blocks, never raises."""
        data = text.encode("utf-8", "replace")
        size = len(data)
        if not size:
            return
        with self._lock:  # O(1) work only: the drain thread swaps the whole queue out
            if self._broken is not None or self._closed or self._queued + size > self.limit:
                self._dropped += size
                self._dropped_total += size
                return
            # Wake the drain thread only when it may be waiting (nothing queued, nothing in hand): in a
            # burst of records a notify each would hand the GIL to the thread a thousand times.
            idle = not self._queue and not self._writing
            if self._dropped:
                self._queue.append(self._dropped)  # the notice goes where the text went missing
                self._dropped = 0
            self._queue.append(data)
            self._queued += size
            if idle:
                self._wake.notify()

    def flush(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for everything queued to reach the fd. True when it did."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue or self._writing or (self._dropped and self._broken is None):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._drained.wait(left)
        return True

    def close(self, timeout: float = 0.0) -> bool:
        """Flush for at most `timeout` seconds, then stop the drain thread after its current write (text
        written later is dropped). Does not close the fd. True when everything was written."""
        flushed = self.flush(timeout)
        with self._lock:
            self._closed = True
            self._wake.notify()
        return flushed

    # -- the drain thread ------------------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not (self._dropped and self._broken is None) and not self._closed:
                    self._wake.wait()
                if self._closed and not self._queue:
                    self._drained.notify_all()
                    return
                self._writing = True  # from now on writers leave the thread be: it is coming
            if not self._closed:
                # Let a burst gather first. Each wake-up of this thread takes the GIL from the event loop
                # for a moment: a record per backend start (1000 starts in a second) cost the loop ~0.15 s
                # of waiting; woken at most once per COALESCE_SECONDS, it writes the burst in a few writes.
                time.sleep(COALESCE_SECONDS)
            with self._lock:
                batch, self._queue = self._queue, collections.deque()
                if self._dropped and self._broken is None:
                    batch.append(self._dropped)  # dropped after the last queued text: the notice goes last
                    self._dropped = 0
            size = sum(len(item) for item in batch if isinstance(item, bytes))
            if self._broken is None:
                payload = b"".join(item if isinstance(item, bytes) else self._notice_bytes(item)
                                   for item in batch)
                try:
                    self._write_all(payload)
                except OSError as err:
                    self._broken = err
            del batch
            with self._lock:
                self._queued -= size
                self._writing = False
                if self._broken is not None:
                    self._queue.clear()  # nothing will ever be written
                    self._queued = 0
                if not self._queue:
                    self._drained.notify_all()

    def _notice_bytes(self, count: int) -> bytes:
        try:
            return self.notice(count).encode("utf-8", "replace")
        except Exception:
            return dropped_notice(count).encode()

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:  # someone made the fd non-blocking: wait until it takes more
                select.select([], [self.fd], [])
                continue
            view = view[written:]


# -- formatting ------------------------------------------------------------------------------------------


def stderr_is_journal() -> bool:
    """True when systemd's JOURNAL_STREAM names the stream on our fd 2."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, inode = stream.partition(":")
    if not dev.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(inode))


class Formatter(logging.Formatter):
    """One record -> its text, every line prefixed: `<N>` (journal) or `YYYY-mm-dd HH:MM:SS.mmm level `."""

    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def prefix(self, levelno: int, levelname: str, created: float, msecs: float) -> str:
        if self.journal:
            return f"<{_PRIORITY.get(levelno, 6)}>"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
        return f"{stamp}.{int(msecs):03d} {levelname.lower():7} "

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            message += "\n" + self.formatStack(record.stack_info)
        prefix = self.prefix(record.levelno, record.levelname, record.created, record.msecs)
        # Lines are what journald and a terminal split on: "\n" only (a CR is not a new record). One
        # str.replace puts the prefix on every line of a chunk of a thousand.
        if message.endswith("\n"):
            message = message[:-1]
        return prefix + message.replace("\n", "\n" + prefix)

    def dropped_notice(self, count: int) -> str:
        """The writer's notice line for `count` dropped bytes, formatted as a warning."""
        now = time.time()
        prefix = self.prefix(logging.WARNING, "WARNING", now, (now % 1) * 1000)
        return prefix + dropped_notice(count)


class WriterHandler(logging.Handler):
    """Formats a record on the caller's thread and hands the text to a `StderrWriter` (no syscall)."""

    def __init__(self, writer: StderrWriter, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.writer = writer

    def handle(self, record: logging.LogRecord) -> bool:
        # The writer is thread-safe: no handler lock around emit.
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):  # Python 3.12+: a filter may return a replacement record
            record = rv
        if rv:
            self.emit(record)
        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception as err:
            # logging's handleError would print a traceback to stderr synchronously: tell the writer.
            text = f"swarmd: cannot format a log record from {record.pathname}:{record.lineno}: {err!r}"
        self.writer.write(text + "\n")

    def flush(self) -> None:
        """Nothing: the exit flush (`flush()`, registered at setup) waits, with a time limit."""


class RingHandler(logging.Handler):
    """Appends each record's message (and traceback) to its level log (see the module docstring). Only
    memory is touched, under the rings' short lock: no I/O, no waiting, from any thread."""

    def __init__(self) -> None:
        super().__init__()
        self.ready = False  # the daemon said READY_MESSAGE: INFO goes to Info from now on
        self._exceptions = logging.Formatter()

    def level_log(self, record: logging.LogRecord) -> LevelLog:
        level = record.levelno
        if level >= logging.ERROR:
            return _ERROR
        if level >= logging.WARNING:
            return _WARNING
        if level >= logging.INFO:
            return _INFO if self.ready else _INIT
        return _DEBUG if level >= logging.DEBUG else _VERBOSE

    def handle(self, record: logging.LogRecord) -> bool:
        rv = self.filter(record)  # no handler lock: the rings have their own
        if isinstance(rv, logging.LogRecord):
            record = rv
        if rv:
            self.emit(record)
        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == BACKEND_LOGGER:
            return
        try:
            try:
                message = record.getMessage()
            except Exception as err:
                message = f"{record.msg!r} {record.args!r} (cannot format: {err!r})"
            if record.exc_info:
                message += "\n" + self._exceptions.formatException(record.exc_info)
            if record.stack_info:
                message += "\n" + self._exceptions.formatStack(record.stack_info)
            self.level_log(record).ring.append("swarmd", message, record.created)
            if not self.ready and record.name == READY_LOGGER and isinstance(record.msg, str) \
                    and record.msg.startswith(READY_MESSAGE):
                self.ready = True
        except Exception:
            pass  # never let the log break the caller (logging's handleError would write to stderr)

    def flush(self) -> None:
        """Nothing to flush: memory only."""


_writer: StderrWriter | None = None
_ring_handler: RingHandler | None = None


def setup(level: str = "info") -> StderrWriter:
    """Configure the root logger: every record goes to fd 2 through one `StderrWriter`, journald-aware,
    and to the level logs (`LEVEL_LOGS`) through one `RingHandler`.

    May be called again (a later call changes the level and the format; the writer and the ring handler,
    with its start-up state, stay). Returns the writer.
    """
    global _writer, _ring_handler
    if _writer is None:
        _writer = StderrWriter(2)
        atexit.register(flush, EXIT_FLUSH_SECONDS)
    if _ring_handler is None:
        _ring_handler = RingHandler()
    formatter = Formatter(stderr_is_journal())
    _writer.notice = formatter.dropped_notice
    handler = WriterHandler(_writer)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler, _ring_handler]
    root.setLevel(level.upper())
    # watchfiles logs every batch of changes at info: the reload's own line says what happened.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    return _writer


def flush(timeout: float = EXIT_FLUSH_SECONDS) -> bool:
    """Wait at most `timeout` seconds for the queued log text to reach stderr (True when it did). For the
    end of the process, and before anything else writes to stderr directly; never on the event loop."""
    return _writer.flush(timeout) if _writer is not None else True


def forward_output(label: str, stream: str, text: str) -> None:
    """Forward a chunk of a backend's output (`stream`: "stdout" or "stderr"; `text`: its lines joined by
    "\\n") to the daemon's log: ONE record at INFO on the `swarmd.backend` logger, each line prefixed
    `"{label}: "`, so a chunk of any number of lines costs one record and one queued write (the prefixes
    are put in by `str.replace`, not a loop over lines). Returns at once when that logger does not log
    INFO."""
    if not text or not _backend_log.isEnabledFor(logging.INFO):
        return
    prefix = f"{label}: "
    _backend_log.info(prefix + text.replace("\n", "\n" + prefix), extra={"output_stream": stream})
