"""A fake systemd notification socket for tests: a bound AF_UNIX datagram socket read by a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable


class NotifyListener:
    """Binds `path` (or, for a path starting with '@', an abstract name) and records every datagram as
    (monotonic time, {field: value}). `address` is what goes into $NOTIFY_SOCKET."""

    def __init__(self, path: str) -> None:
        self.address = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + path[1:] if path.startswith("@") else path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.partition("=")[::2] for line in data.decode().split("\n") if line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def snapshot(self) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return list(self.messages)

    def values(self, key: str) -> list[str]:
        """Every value `key` had, in order."""
        return [fields[key] for _, fields in self.snapshot() if key in fields]

    def wait_for(self, predicate: Callable[[dict[str, str]], object], timeout: float = 15.0,
                 start: int = 0, what: str = "") -> int:
        """The index of the first message from `start` on that satisfies `predicate` (waits for it)."""
        from tests.helpers import wait_until

        def first() -> list[int]:  # a list: index 0 is a find
            return [index for index, (_, fields) in enumerate(self.snapshot()[start:], start) if predicate(fields)][:1]

        try:
            return wait_until(first, timeout, what=f"notification {what or predicate}")[0]
        except AssertionError as err:
            raise AssertionError(f"{err}; got {self.snapshot()}") from None

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()
