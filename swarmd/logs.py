"""The daemon's log output: plain timestamped lines, or journald's `<N>` priority prefix under systemd.

systemd sets JOURNAL_STREAM=<dev>:<inode> for the stream it connected to stderr; when it matches our
stderr, each line starts with a syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug) and no
timestamp (the journal keeps its own).
"""

from __future__ import annotations

import logging
import os
import sys
import time

_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, inode = stream.partition(":")
    if not dev.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(inode))


class _Formatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.journal:
            prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
            return "\n".join(prefix + line for line in message.splitlines() or [""])
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        return f"{stamp}.{int(record.msecs):03d} {record.levelname.lower():7} {message}"


def setup(level: str = "info") -> None:
    """Configure the root logger once: stderr, journald-aware."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(stderr_is_journal()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # watchfiles logs every batch of changes at info: the reload's own line says what happened.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)


#: Backend output is forwarded through this logger as "backend-<id>: <line>".
backend_log = logging.getLogger("swarmd.backend")
