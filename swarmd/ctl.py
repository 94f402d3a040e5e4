"""`swarmctl`: the command-line client of a running swarmd, over its unix socket.

Only the standard library is used (http.client over AF_UNIX), so the command starts fast and works from
any Python 3.11. Every command is one or a few calls of the daemon's SwarmUI-compatible API; `call` sends
any route with any JSON body.

Exit status: 0 ok; 1 the daemon answered with an error (printed); 2 usage; 3 cannot reach the daemon
(the socket path tried and why are printed).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import sys
from collections.abc import Sequence
from typing import Any

DEFAULT_SOCKET = "/run/swarmd/swarmd.sock"
SOCKET_ENV = "SWARMD_SOCKET"
DEFAULT_TIMEOUT = 120.0
#: How long one `logs --follow` long poll waits on the daemon for a new line (the daemon caps it at 30).
FOLLOW_WAIT = 20.0

EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE, EXIT_CONNECT = 0, 1, 2, 3


class CannotConnect(Exception):
    """The daemon could not be reached (or the connection broke). `str(err)` says where and why."""


class ServerError(Exception):
    """The daemon answered with an error. `str(err)` is its message; `answer` the whole answer."""

    def __init__(self, message: str, answer: Any = None) -> None:
        super().__init__(message)
        self.answer = answer


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Client:
    """Calls API routes on one keep-alive connection. Raises CannotConnect or ServerError."""

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._conn: _UnixHTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def call(self, route: str, body: Any = None, *, timeout: float | None = None) -> Any:
        """POST /API/<route> with `body` (default {}); the decoded answer. An answer carrying "error"
        raises ServerError."""
        answer = self.call_raw(route, json.dumps({} if body is None else body).encode(), timeout=timeout)
        if isinstance(answer, dict) and "error" in answer:
            raise ServerError(str(answer["error"]), answer)
        return answer

    def call_raw(self, route: str, payload: bytes, *, timeout: float | None = None) -> Any:
        """POST raw bytes; the decoded JSON answer, whatever it says. Raises CannotConnect, ServerError
        (only for an answer that is not JSON)."""
        if self._conn is None:
            self._conn = _UnixHTTPConnection(self.socket_path, self.timeout)
        conn = self._conn
        conn.timeout = timeout if timeout is not None else self.timeout
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
        reused = conn.sock is not None
        try:
            try:
                conn.request("POST", f"/API/{route}", body=payload, headers=headers)
                response = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # The daemon closed our idle keep-alive connection before reading this request: send it
                # again on a fresh one (nothing of it was processed).
                conn.close()
                conn.request("POST", f"/API/{route}", body=payload, headers=headers)
                response = conn.getresponse()
            data = response.read()
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as err:
            self.close()
            raise CannotConnect(f"cannot connect to {self.socket_path}: {_why(err)}") from None
        except TimeoutError:
            self.close()
            raise CannotConnect(f"no answer from {self.socket_path} within {conn.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as err:
            self.close()
            raise CannotConnect(f"lost the connection to {self.socket_path}: {_why(err)}") from None
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        try:
            return json.loads(data)
        except ValueError:
            raise ServerError(f"the daemon sent a non-JSON answer (HTTP {response.status}): "
                              f"{data[:200].decode('utf-8', 'replace')!r}") from None


def _why(err: BaseException) -> str:
    if isinstance(err, FileNotFoundError):
        return "no such socket (is swarmd running? is the path right?)"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (no daemon is listening: a stale socket?)"
    if isinstance(err, PermissionError):
        return "permission denied (the socket's mode or group does not let you in)"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


# -- output ----------------------------------------------------------------------------------------------


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)


def _gpu_text(backend: dict[str, Any]) -> str:
    gpus = backend.get("gpus") or []
    shown = []
    for gpu in gpus if isinstance(gpus, list) else []:
        if isinstance(gpu, dict):
            shown.append(str(next((gpu[k] for k in ("index", "id", "uuid", "name") if k in gpu), "?")))
        else:
            shown.append(str(gpu))
    return ",".join(shown)


def _backend_line(backend: dict[str, Any]) -> str:
    return f"backend {backend.get('id')} ({backend.get('title')!r}, {backend.get('type')}): {backend.get('status')}"


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# -- commands ---------------------------------------------------------------------------------------------


def _settings_from_pairs(pairs: Sequence[str]) -> dict[str, str]:
    settings: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _UsageError(f"expected key=value, got {pair!r}")
        settings[key] = value
    return settings


class _UsageError(Exception):
    pass


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    answer = client.call("ListBackends", {"full_data": True})
    if args.json:
        _print_json(answer)
        return EXIT_OK
    rows = [
        (b.get("id"), b.get("title"), b.get("type"), _status_text(b), b.get("pid"), _gpu_text(b), b.get("restarts"))
        for b in answer.values()
    ]
    print(_table(rows, ("ID", "TITLE", "TYPE", "STATUS", "PID", "GPU", "RESTARTS")))
    return EXIT_OK


#: How much of a status message `list` shows after the status (`status ID` shows all of it).
SHORT_CAUSE = 60


def _status_text(backend: dict[str, Any]) -> str:
    """The status, and for an errored or waiting backend a short cause: "errored: exited with status 2:
    main.py: error: unrecognized arg..."."""
    status = str(backend.get("status"))
    message = str(backend.get("status_message") or "")
    if status not in ("errored", "waiting", "idle") or not message or message.startswith("Waiting to load"):
        return status
    cause = _POLICY_PART.sub("", message, count=1)  # "<what> (<policy>): <cause>" -> "<what>: <cause>"
    return f"{status}: {cause if len(cause) <= SHORT_CAUSE else cause[:SHORT_CAUSE - 3] + '...'}"


#: The restart policy's part of a status message (see supervise/lifecycle.py `_after_exit`).
_POLICY_PART = re.compile(r" \((?:restart[: ]|gave up after )[^)]*\)")


def cmd_types(client: Client, args: argparse.Namespace) -> int:
    answer = client.call("ListBackendTypes")
    if args.json:
        _print_json(answer)
        return EXIT_OK
    for index, entry in enumerate(answer.get("list", [])):
        if index:
            print()
        print(f"{entry.get('id')}: {entry.get('name')} - {entry.get('description')}")
        rows = [(s.get("name"), s.get("type"), json.dumps(s.get("default")), s.get("description"))
                for s in entry.get("settings", [])]
        if rows:
            table = _table(rows, ("SETTING", "TYPE", "DEFAULT", "DESCRIPTION"))
            print("\n".join("  " + line for line in table.splitlines()))
    return EXIT_OK


def cmd_add(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"type_id": args.type}
    if args.title is not None:
        body["title"] = args.title
    if args.settings:
        body["settings"] = _settings_from_pairs(args.settings)
    answer = client.call("AddNewBackend", body)
    _print_json(answer) if args.json else print(f"added {_backend_line(answer)}")
    return EXIT_OK


def cmd_edit(client: Client, args: argparse.Namespace) -> int:
    settings = _settings_from_pairs(args.settings)
    title = args.title
    if title is None:
        # EditBackend requires the title: keep the current one.
        backends = client.call("ListBackends")
        current = backends.get(str(args.id)) if isinstance(backends, dict) else None
        if current is None:
            raise ServerError(f"Invalid backend ID {args.id}")
        title = current.get("title", "")
    body: dict[str, Any] = {"backend_id": args.id, "title": title, "settings": settings}
    if args.new_id is not None:
        body["new_id"] = args.new_id
    answer = client.call("EditBackend", body)
    _print_json(answer) if args.json else print(f"edited {_backend_line(answer)}")
    return EXIT_OK


def _result(client: Client, args: argparse.Namespace, route: str, body: dict[str, Any]) -> int:
    answer = client.call(route, body)
    _print_json(answer) if args.json else print(answer.get("result"))
    return EXIT_OK


def cmd_rm(client: Client, args: argparse.Namespace) -> int:
    return _result(client, args, "DeleteBackend", {"backend_id": args.id})


def cmd_enable(client: Client, args: argparse.Namespace) -> int:
    return _result(client, args, "ToggleBackend", {"backend_id": args.id, "enabled": True})


def cmd_disable(client: Client, args: argparse.Namespace) -> int:
    return _result(client, args, "ToggleBackend", {"backend_id": args.id, "enabled": False})


def cmd_restart(client: Client, args: argparse.Namespace) -> int:
    """Restart whatever the target names that is enabled -- also a backend stuck loading or waiting (the
    API's `force`); says which and from what."""
    answer = client.call("RestartBackends", {"backend": args.target, "force": True})
    if args.json:
        _print_json(answer)
        return EXIT_OK
    restarted = answer.get("restarted", [])
    if not restarted:
        print("restarted nothing: no enabled backend matches" if args.target == "all" else
              f"restarted nothing: backend {args.target} does not exist or is disabled")
        return EXIT_SERVER_ERROR if args.target != "all" else EXIT_OK
    for item in restarted:
        print(f"restarted backend {item['id']} (it was {item['was']})")
    return EXIT_OK


def cmd_free(client: Client, args: argparse.Namespace) -> int:
    answer = client.call("FreeBackendMemory", {"backend": args.target, "system_ram": args.system_ram})
    if args.json:
        _print_json(answer)
    elif answer.get("result"):
        count = answer.get("count", 0)
        print(f"freed memory on {count} backend{'' if count == 1 else 's'}")
    else:
        print("no running backend to free memory on")
    return EXIT_OK


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    """A backend's output (asked by its log identifier, `backend-<id>`), or any log by its name (`Info`,
    `Warning`, `ComfyUI-0`); with --follow, long polls that each carry the last sequence id seen."""
    key = f"backend-{int(args.log)}" if _is_backend_id(args.log) else args.log
    answer = client.call("ListRecentLogMessages", {"types": [key], "last_sequence_ids": {}})
    lines = _log_lines(answer, key, args.log)
    last = lines[-1].get("sequence_id", -1) if lines else -1
    if args.lines is not None:
        lines = lines[-args.lines:] if args.lines > 0 else []
    _print_log(lines, args.json)
    while args.follow:
        body = {"types": [key], "last_sequence_ids": {key: last}, "wait_seconds": FOLLOW_WAIT}
        answer = client.call("ListRecentLogMessages", body, timeout=FOLLOW_WAIT + client.timeout)
        lines = _log_lines(answer, key, args.log)
        if lines:
            last = lines[-1].get("sequence_id", last)
        _print_log(lines, args.json)
    return EXIT_OK


def _is_backend_id(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _log_lines(answer: Any, key: str, asked: str) -> list[dict[str, Any]]:
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict) or key not in data:
        raise ServerError(f"Invalid backend ID {asked}" if _is_backend_id(asked) else f"Unknown log '{asked}'")
    return list(data[key])


def _print_log(lines: list[dict[str, Any]], as_json: bool) -> None:
    for line in lines:
        print(json.dumps(line, ensure_ascii=False) if as_json else line.get("message", ""), flush=True)


def cmd_call(client: Client, args: argparse.Namespace) -> int:
    payload = (args.body if args.body is not None else "{}").encode()
    answer = client.call_raw(args.route, payload)
    _print_json(answer)
    return EXIT_SERVER_ERROR if isinstance(answer, dict) and "error" in answer else EXIT_OK


#: How many of its last log lines `status ID` shows.
STATUS_LINES = 10


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    if args.backend is not None:
        return _backend_status(client, args)
    answer = client.call("GetDaemonStatus")
    if args.json:
        _print_json(answer)
        return EXIT_OK
    counts = answer.get("counts") or {}
    print(f"swarmd {answer.get('version')} on {client.socket_path}")
    print(f"backends file: {answer.get('backends_file')}")
    if answer.get("file_problem"):
        print(f"file problem: {answer['file_problem']}")
    total = sum(counts.values()) if isinstance(counts, dict) else 0
    shown = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) if counts else "none"
    print(f"backends: {total} ({shown})")
    for key, value in answer.items():
        if key not in ("version", "backends_file", "file_problem", "counts"):
            print(f"{key.replace('_', ' ')}: {json.dumps(value) if isinstance(value, dict | list) else value}")
    return EXIT_OK


def _backend_status(client: Client, args: argparse.Namespace) -> int:
    """One backend: its status, the whole status message, and its last log lines (output and the
    daemon's notes about it)."""
    backend = client.call("ListBackends", {"full_data": True}).get(str(args.backend))
    if backend is None:
        raise ServerError(f"Invalid backend ID {args.backend}")
    key = f"backend-{args.backend}"
    log = client.call("ListRecentLogMessages", {"types": [key], "last_sequence_ids": {}})
    lines = (log.get("data") or {}).get(key, [])[-STATUS_LINES:]
    if args.json:
        _print_json({"backend": backend, "last_lines": lines})
        return EXIT_OK
    print(f"backend {backend.get('id')} ({backend.get('title')!r}, {backend.get('type')}): {backend.get('status')}")
    if backend.get("status_message"):
        print(f"  {backend['status_message']}")
    details = [f"pid {backend['pid']}" if backend.get("pid") else "no process",
               f"{backend.get('restarts', 0)} restarts"]
    if backend.get("last_exit"):
        details.append(f"last exit: {backend['last_exit'].get('text')}")
    print(f"  {', '.join(details)}")
    if lines:
        print("last lines:")
        for line in lines:
            print(f"  {line.get('time', '')} {line.get('stream', '')}: {line.get('message', '')}")
    return EXIT_OK


# -- argument parsing -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    # --socket and --json are accepted before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help=f"the daemon's socket (default: ${SOCKET_ENV}, else {DEFAULT_SOCKET})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the raw JSON answers")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                        help=f"seconds to wait for an answer (default {DEFAULT_TIMEOUT:g})")

    parser = argparse.ArgumentParser(prog="swarmctl", parents=[common],
                                     description="Control a running swarmd over its unix socket.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    command("list", cmd_list, "list the backends")
    command("types", cmd_types, "list the backend types and their settings")
    p = command("add", cmd_add, "add a backend")
    p.add_argument("type", metavar="TYPE")
    p.add_argument("--title")
    p.add_argument("settings", nargs="*", metavar="key=value")
    p = command("edit", cmd_edit, "change a backend's settings (only the keys given), title or id")
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("--title")
    p.add_argument("--new-id", type=int, dest="new_id")
    p.add_argument("settings", nargs="*", metavar="key=value")
    p = command("rm", cmd_rm, "delete a backend (it is stopped first)")
    p.add_argument("id", type=int, metavar="ID")
    p = command("enable", cmd_enable, "enable a backend")
    p.add_argument("id", type=int, metavar="ID")
    p = command("disable", cmd_disable, "disable a backend (it is stopped)")
    p.add_argument("id", type=int, metavar="ID")
    p = command("restart", cmd_restart, "restart one backend or all running/errored ones")
    p.add_argument("target", nargs="?", default="all", type=_id_or_all, metavar="ID|all")
    p = command("free", cmd_free, "ask backends to free (V)RAM")
    p.add_argument("target", nargs="?", default="all", type=_id_or_all, metavar="ID|all")
    p.add_argument("--system-ram", action="store_true", dest="system_ram", help="free system RAM too")
    p = command("logs", cmd_logs, "print a backend's recent output, or one of the daemon's logs by name")
    p.add_argument("log", metavar="ID|NAME", help="a backend id, or a log name (Info, Warning, ComfyUI-0, ...)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", "--lines", type=int, help="only the last N lines")
    p = command("call", cmd_call, "call any API route with a JSON body; print the answer")
    p.add_argument("route", metavar="ROUTE")
    p.add_argument("body", nargs="?", metavar="JSON")
    p = command("status", cmd_status, "the daemon's status, or one backend's: its whole status message and "
                                      "last lines")
    p.add_argument("backend", nargs="?", type=int, metavar="ID")
    return parser


def _id_or_all(text: str) -> str:
    if text == "all":
        return text
    try:
        return str(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a backend id or 'all', got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `swarmctl` console script. Returns (and exits with) the exit status."""
    parser = _parser()
    # key=value pairs may come before or after options (`add process --title t command=...`): argparse
    # stops filling a nargs="*" positional at the first option, so the rest arrive as extras.
    args, extras = parser.parse_known_args(argv)
    if extras:
        if hasattr(args, "settings") and all("=" in x and not x.startswith("-") for x in extras):
            args.settings = [*args.settings, *extras]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
    args.json = getattr(args, "json", False)
    socket_path = getattr(args, "socket", None) or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
    client = Client(socket_path, timeout=getattr(args, "timeout", DEFAULT_TIMEOUT))
    try:
        return args.func(client, args)
    except _UsageError as err:
        print(f"swarmctl: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ServerError as err:
        if args.json and err.answer is not None:
            _print_json(err.answer)
        print(f"swarmctl: {err}", file=sys.stderr)
        return EXIT_SERVER_ERROR
    except CannotConnect as err:
        print(f"swarmctl: {err}", file=sys.stderr)
        return EXIT_CONNECT
    except KeyboardInterrupt:
        return EXIT_OK if getattr(args, "follow", False) else 130
    except BrokenPipeError:
        # `swarmctl logs 0 | head`: the reader left; nothing more to say.
        sys.stderr.close()
        return EXIT_OK
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
