"""The guardian: a tiny process that kills every backend group when the daemon goes away.

Run by the daemon as `python -I -S guardian.py` with a pipe on stdin. The daemon writes `+PGID` when a
backend starts and `-PGID` when its group is gone. When the pipe closes -- the daemon exited, cleanly or by
SIGKILL -- every group still listed gets SIGKILL, grandchildren included. It ignores the terminal's and
systemd's polite signals: its only job is to outlive the daemon by a few milliseconds.

Stdlib only and no imports of swarmd: it starts in a few milliseconds with site disabled.
"""

import os
import signal


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    groups: set[int] = set()
    pending = b""
    while True:
        try:
            data = os.read(0, 65536)
        except InterruptedError:
            continue
        if not data:
            break
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line[:1] == b"+":
                groups.add(int(line[1:]))
            elif line[:1] == b"-":
                groups.discard(int(line[1:]))
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


if __name__ == "__main__":
    main()
