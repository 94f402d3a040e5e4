"""A very small HTTP/1.1 client on trio for loopback probes and hooks (readiness, /free).

Runtime code must not depend on httpx (a test extra). One request per connection, `Connection: close`;
the answer is read up to a bound so a misbehaving backend cannot make the daemon buffer without end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio

MAX_RESPONSE = 1024 * 1024


class HttpError(Exception):
    """The request could not be made or the answer could not be read."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


async def request(method: str, url: str, *, json_body: Any = None, timeout: float = 5.0) -> Response:
    """Send one request to an http:// URL. Raises HttpError (connection refused, timeout, garbage)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise HttpError(f"not an http:// URL: {url!r}")
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    body = b"" if json_body is None else json.dumps(json_body).encode()
    head = [f"{method} {path} HTTP/1.1", f"Host: {parts.hostname}:{port}", "Connection: close",
            "User-Agent: swarmd", "Accept: */*"]
    if json_body is not None or method not in ("GET", "HEAD"):
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    payload = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    with trio.move_on_after(timeout) as scope:
        try:
            stream = await trio.open_tcp_stream(parts.hostname, port)
        except OSError as err:
            raise HttpError(f"cannot connect to {parts.hostname}:{port}: {err.strerror or err}") from None
        async with stream:
            try:
                await stream.send_all(payload)
                data = b""
                while len(data) < MAX_RESPONSE:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    data += chunk
                    if method == "HEAD" and b"\r\n\r\n" in data:
                        break
            except (OSError, trio.BrokenResourceError) as err:
                raise HttpError(f"connection to {parts.hostname}:{port} broke: {err}") from None
    if scope.cancelled_caught:
        raise HttpError(f"no answer from {url} within {timeout:g} s")
    line, _, rest = data.partition(b"\r\n")
    fields = line.split(b" ", 2)
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        raise HttpError(f"not an HTTP answer from {url}")
    _, _, content = rest.partition(b"\r\n\r\n")
    return Response(int(fields[1]), content)
