"""A very small HTTP/1.1 client on trio for loopback probes and hooks (readiness, /free).

Runtime code must not depend on httpx (a test extra). One request per connection, `Connection: close`;
the answer is read up to a bound so a misbehaving backend cannot make the daemon buffer without end.

`parse_url` is the one place an http:// URL is taken apart: the settings checks use it (so a URL that
validation accepts is one `request` can use) and `request` uses it (so no URL string, however broken, makes
it raise anything but `HttpError`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio

from swarmd.settings import describe

MAX_RESPONSE = 1024 * 1024


class HttpError(Exception):
    """The request could not be made or the answer could not be read."""


class BadUrl(HttpError, ValueError):
    """A URL that `request` cannot use. `str(err)` says what is wrong with it, without the URL."""


@dataclass(frozen=True)
class Target:
    """Where a URL leads: the address to connect to and what to send."""

    host: str  # to connect to: a name, an IPv4 address, or an IPv6 address without brackets
    port: int
    path: str  # the request target: path and query
    host_header: str  # "[::1]:8188" for an IPv6 host


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


_UNSAFE = re.compile(r"[^\x21-\x7e]")  # anything but printable ASCII without the space
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def parse_url(url: str) -> Target:
    """Take an http:// URL apart: scheme http, a host (name, IPv4, or IPv6 in brackets), a port 1-65535
    when given (80 otherwise), no user:password@, no #fragment, printable ASCII only. Raises BadUrl (an
    HttpError and a ValueError) saying what is wrong."""
    if not isinstance(url, str):
        raise BadUrl(f"expected text, got {describe(url)}")
    bad = _UNSAFE.search(url)
    if bad is not None:
        what = "a space" if bad.group() == " " else (
            "a non-ASCII character (percent-encode it)" if ord(bad.group()) > 0x7E else "a control character")
        raise BadUrl(f"{what} at character {bad.start()}")
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() != "http":
        if scheme.lower() == "https":
            raise BadUrl("https is not supported: use http://")
        raise BadUrl("it does not start with http://")
    if "#" in url:
        raise BadUrl("a #fragment is not allowed")
    try:
        parts = urlsplit(url)
    except ValueError as err:
        raise BadUrl(str(err) or "not a URL") from None
    netloc = parts.netloc
    if "@" in netloc:
        raise BadUrl("user:password@ is not supported")
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise BadUrl("Invalid IPv6 URL: no closing ]")
        host, rest = netloc[1:end], netloc[end + 1:]
        if rest and not rest.startswith(":"):
            raise BadUrl(f"unexpected {describe(rest)} after the IPv6 address")
        port_text = rest[1:] if rest else ""
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadUrl(f"{describe(host)} is not an IPv6 address") from None
        connect, host_header = host, f"[{host}]"
    else:
        host, _, port_text = netloc.partition(":")
        if "[" in netloc or "]" in netloc:
            raise BadUrl("Invalid IPv6 URL: brackets in the wrong place")
        if ":" in port_text:
            raise BadUrl("an IPv6 address must be written in brackets, e.g. http://[::1]:8188")
        if not host:
            raise BadUrl("no host")
        name = host.lower()
        labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
        if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
            raise BadUrl(f"{describe(host)} is not a valid host name")
        connect, host_header = name, name
    if port_text == "":
        port = 80
    elif not (port_text.isascii() and port_text.isdigit()):
        raise BadUrl(f"port {describe(port_text)} is not a number")
    elif len(port_text) > 5 or not 1 <= int(port_text) <= 65535:
        shown = port_text if len(port_text) <= 12 else port_text[:12] + "..."
        raise BadUrl(f"port {shown} out of range")
    else:
        port = int(port_text)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(host=connect, port=port, path=path, host_header=f"{host_header}:{port}")


async def request(method: str, url: str, *, json_body: Any = None, timeout: float = 5.0) -> Response:
    """Send one request to an http:// URL. Raises HttpError (bad URL, connection refused, timeout, garbage)
    and nothing else."""
    try:
        target = parse_url(url)
    except BadUrl as err:
        raise HttpError(f"not a usable http:// URL {describe(url)}: {err}") from None
    where = target.host_header
    body = b"" if json_body is None else json.dumps(json_body).encode()
    head = [f"{method} {target.path} HTTP/1.1", f"Host: {target.host_header}", "Connection: close",
            "User-Agent: swarmd", "Accept: */*"]
    if json_body is not None or method not in ("GET", "HEAD"):
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    payload = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    with trio.move_on_after(timeout) as scope:
        try:
            stream = await trio.open_tcp_stream(target.host, target.port)
        except (OSError, ValueError) as err:  # ValueError: a name the resolver refuses (e.g. IDNA)
            text = getattr(err, "strerror", None) or str(err) or type(err).__name__
            raise HttpError(f"cannot connect to {where}: {text}") from None
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
                raise HttpError(f"connection to {where} broke: {err}") from None
    if scope.cancelled_caught:
        raise HttpError(f"no answer from {describe(url)} within {timeout:g} s")
    line, _, rest = data.partition(b"\r\n")
    fields = line.split(b" ", 2)
    status = fields[1] if len(fields) >= 2 else b""
    # A status is three digits (int() of a 5000-digit one would raise ValueError, not HttpError).
    if not fields[0].startswith(b"HTTP/") or len(status) != 3 or not status.isdigit():
        raise HttpError(f"not an HTTP answer from {describe(url)}")
    _, _, content = rest.partition(b"\r\n\r\n")
    return Response(int(status), content)
