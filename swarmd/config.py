"""The daemon config file (`/etc/swarmd/swarmd.yaml`): where the backends file and the socket are, who may
do what, how much to log, where the read-only HTTP listener listens (`http_listen`, off by default) -- and
`DaemonConfig`, the one object that carries the result to the daemon.

Theory of operation
-------------------
* Which file: `--config FILE` when given (a missing one is an error: the operator named it), else
  `DEFAULT_CONFIG` when it exists, else none (every value from flags and defaults). `$SWARMD_CONFIG`
  replaces `DEFAULT_CONFIG`, for tests and unusual layouts.
* What wins: a command-line flag, then the file, then the default. The socket's default is
  `$RUNTIME_DIRECTORY/swarmd.sock` under systemd (`RuntimeDirectory=swarmd`), else
  `/run/swarmd/swarmd.sock`; the backends file's is `$SWARMD_BACKENDS`, else `DEFAULT_BACKENDS`. Relative
  paths in the file are relative to the file's directory.
* Every key is parsed here, from ruamel's round-trip nodes, so each problem is a `Problem(path, line, col,
  message)` located at the node it is about; all problems are collected and raised together as
  `ConfigInvalid`.
* Names become ids here, once, when the config is loaded (before the event loop runs): `socket.group`
  (an unknown group is a problem: the socket could not be given to it) and the `user:` / `group:` of each
  `access:` rule (an unknown one is a warning, and the rule never matches: a user created later is not
  let in before the daemon restarts). The API then compares integers only.
"""

from __future__ import annotations

import grp
import ipaddress
import logging
import os
import pwd
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from swarmd.api.access import DEFAULT_SOCKET_MODE, ROLES, AccessRule, kind, parse_mode
from swarmd.backends_file import FileInvalid, Problem, key_position, node_position, value_position
from swarmd.supervise.output import RING_BYTES, RING_LINES

log = logging.getLogger("swarmd.config")

DEFAULT_CONFIG = "/etc/swarmd/swarmd.yaml"
CONFIG_ENV = "SWARMD_CONFIG"
DEFAULT_BACKENDS = "/etc/swarmd/backends.yaml"
BACKENDS_ENV = "SWARMD_BACKENDS"
DEFAULT_SOCKET = "/run/swarmd/swarmd.sock"
SOCKET_NAME = "swarmd.sock"
LOG_LEVELS = ("debug", "info", "warning", "error")
#: Top-level keys of the file.
KEYS = ("backends", "socket", "access", "log_level", "http_listen", "output_ring_lines", "output_ring_bytes")
#: The bounds a backend's output ring may be given: at least one cut line (`supervise.pipes.MAX_LINE`)
#: must fit; at most what 1000 backends can hold in memory.
RING_LINES_RANGE = (10, 1_000_000)
RING_BYTES_RANGE = (64 * 1024, 1024 * 1024 * 1024)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024 ** 2, "mb": 1024 ** 2,
               "mib": 1024 ** 2, "g": 1024 ** 3, "gb": 1024 ** 3, "gib": 1024 ** 3}
#: The host of an `http_listen` given as a port alone: loopback, so nothing is exposed by accident.
HTTP_DEFAULT_HOST = "127.0.0.1"
SOCKET_KEYS = ("path", "mode", "group")
RULE_KEYS = ("user", "group", "uid", "role")
_SELECTORS = ("user", "group", "uid")
_EXAMPLE_RULE = "{user: alice, role: admin}"


class ConfigInvalid(FileInvalid):
    """The config file cannot be used; `problems` are located `FILE:LINE:COL: message` entries."""


@dataclass(frozen=True)
class DaemonConfig:
    """Everything the daemon needs from its command line, its config file and the defaults (`resolve`).

    `socket_group` is the group as written (for messages) and `socket_gid` its id, resolved when the config
    was loaded; `access` holds the rules with their user and group names resolved to ids. `config_path` is
    the file that was read, or None when there was none.
    """

    backends: str
    socket: str
    socket_mode: int = DEFAULT_SOCKET_MODE
    socket_group: str | None = None
    socket_gid: int | None = None
    access: tuple[AccessRule, ...] = ()
    log_level: str = "info"
    config_path: str | None = None
    #: (host, port) of the read-only HTTP listener (/metrics, /healthz, the status page); None: off.
    http_listen: tuple[str, int] | None = None
    #: Each backend's output ring keeps at most this many lines and bytes of its output.
    output_ring_lines: int = RING_LINES
    output_ring_bytes: int = RING_BYTES


def _system_uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return int(name) if name.isdigit() else None


def _system_gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return int(name) if name.isdigit() else None


@dataclass(frozen=True)
class Names:
    """How user and group names become ids: `user_id(name)` / `group_id(name)` -> id, or None when there is
    no such user or group. Numeric text that names nobody is taken as the id itself. The default asks the
    system's databases (blocking: called at load only); tests pass their own."""

    user_id: Callable[[str], int | None] = _system_uid
    group_id: Callable[[str], int | None] = _system_gid


SYSTEM_NAMES = Names()


def default_socket(environ: Mapping[str, str] | None = None) -> str:
    """`$RUNTIME_DIRECTORY/swarmd.sock` under systemd (the first directory when it lists several), else
    `/run/swarmd/swarmd.sock`."""
    environ = os.environ if environ is None else environ
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return os.path.join(runtime, SOCKET_NAME) if runtime else DEFAULT_SOCKET


def config_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The config file to read: `explicit` (must exist: ConfigInvalid otherwise), else the default one
    when it exists, else None."""
    environ = os.environ if environ is None else environ
    if explicit is not None:
        if not os.path.exists(explicit):
            raise ConfigInvalid([Problem(explicit, 1, 1, "no such config file")])
        return explicit
    default = environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    return default if os.path.exists(default) else None


def resolve(*, config: str | None = None, backends: str | None = None, socket: str | None = None,
            log_level: str | None = None, environ: Mapping[str, str] | None = None,
            names: Names = SYSTEM_NAMES) -> DaemonConfig:
    """The daemon's configuration from the command line's values (None: not given), the config file and
    the defaults, in that order of precedence. Raises ConfigInvalid. Looks names up: call it before the
    event loop runs."""
    environ = os.environ if environ is None else environ
    path = config_path(config, environ)
    values = read(path, names) if path is not None else {}
    return DaemonConfig(
        backends=backends or values.get("backends") or environ.get(BACKENDS_ENV) or DEFAULT_BACKENDS,
        socket=socket or values.get("socket") or default_socket(environ),
        socket_mode=values.get("socket_mode", DEFAULT_SOCKET_MODE),
        socket_group=values.get("socket_group"),
        socket_gid=values.get("socket_gid"),
        access=values.get("access", ()),
        log_level=log_level or values.get("log_level") or "info",
        config_path=path,
        http_listen=values.get("http_listen"),
        output_ring_lines=values.get("output_ring_lines", RING_LINES),
        output_ring_bytes=values.get("output_ring_bytes", RING_BYTES),
    )


def load(path: str, *, environ: Mapping[str, str] | None = None, names: Names = SYSTEM_NAMES) -> DaemonConfig:
    """The config file at `path` with the defaults for what it does not set (no flags). Raises
    ConfigInvalid."""
    return resolve(config=path, environ=environ, names=names)


def read(path: str, names: Names = SYSTEM_NAMES) -> dict[str, Any]:
    """The `DaemonConfig` fields the file at `path` sets (name -> value). Raises ConfigInvalid with every
    problem found."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else f"not UTF-8 text ({err.reason})"
        raise ConfigInvalid([Problem(path, 1, 1, f"cannot read: {reason}")]) from None
    return parse(path, text, names)


def parse(path: str, text: str, names: Names = SYSTEM_NAMES) -> dict[str, Any]:
    """`read` for the config `text` (read from `path`). Raises ConfigInvalid."""
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = err.problem or err.context
        raise ConfigInvalid([Problem(path, line, col, f"YAML syntax: {what}")]) from None
    except Exception as err:  # ruamel raises a few unmarked errors (e.g. bad unicode)
        raise ConfigInvalid([Problem(path, 1, 1, f"YAML syntax: {err}")]) from None
    if doc is None:
        return {}  # an empty (or all-comments) file: every default
    if not isinstance(doc, Mapping):
        raise ConfigInvalid([Problem(path, *node_position(doc),
                                     "expected a mapping of settings (backends:, socket:, ...)")])
    parser = _Parser(path, names)
    values = parser.parse(doc)
    if parser.problems:
        raise ConfigInvalid(parser.problems)
    return values


class _Parser:
    """Walks one round-trip document, collecting located problems and the values it sets."""

    def __init__(self, path: str, names: Names) -> None:
        self.path = path
        self.base = os.path.dirname(os.path.abspath(path))
        self.names = names
        self.problems: list[Problem] = []

    def problem(self, at: tuple[int, int], message: str) -> None:
        self.problems.append(Problem(self.path, at[0], at[1], message))

    def parse(self, doc: Mapping[Any, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key in doc:
            if key not in KEYS:
                self.problem(key_position(doc, key),
                             f"{key}: unknown key (expected one of {', '.join(KEYS)})")
        backends = doc.get("backends")
        if backends is not None:
            if not isinstance(backends, str) or not backends.strip():
                self.problem(value_position(doc, "backends"),
                             "backends: expected the path of the backends file")
            else:
                values["backends"] = os.path.join(self.base, backends)
        log_level = doc.get("log_level")
        if log_level is not None:
            if not isinstance(log_level, str) or log_level.lower() not in LOG_LEVELS:
                self.problem(value_position(doc, "log_level"),
                             f"log_level: expected one of {', '.join(LOG_LEVELS)}, got {kind(log_level)}")
            else:
                values["log_level"] = log_level.lower()
        if doc.get("socket") is not None:
            values.update(self.socket(doc))
        if doc.get("access") is not None:
            values["access"] = self.access(doc)
        if doc.get("http_listen") is not None:
            try:
                values["http_listen"] = parse_listen(doc["http_listen"])
            except ValueError as err:
                self.problem(value_position(doc, "http_listen"), f"http_listen: {err}")
        for key, bounds in (("output_ring_lines", RING_LINES_RANGE), ("output_ring_bytes", RING_BYTES_RANGE)):
            if doc.get(key) is not None:
                try:
                    values[key] = parse_amount(doc[key], bounds, sizes=key.endswith("bytes"))
                except ValueError as err:
                    self.problem(value_position(doc, key), f"{key}: {err}")
        return values

    def socket(self, doc: Mapping[Any, Any]) -> dict[str, Any]:
        """```yaml
        socket:
          path: /run/swarmd/swarmd.sock
          mode: "0660"          # quoted: YAML 1.2 reads 0660 as the decimal number 660
          group: swarm
        ```"""
        node = doc["socket"]
        if not isinstance(node, Mapping):
            self.problem(value_position(doc, "socket"),
                         f"socket: expected a mapping with {', '.join(SOCKET_KEYS)}; got {kind(node)}")
            return {}
        values: dict[str, Any] = {}
        for key in node:
            if key not in SOCKET_KEYS:
                self.problem(key_position(node, key),
                             f"socket.{key}: unknown key (expected {', '.join(SOCKET_KEYS)})")
        path = node.get("path")
        if path is not None:
            if not isinstance(path, str) or not path.strip():
                self.problem(value_position(node, "path"),
                             f"socket.path: expected a file path, got {kind(path)}")
            else:
                values["socket"] = os.path.join(self.base, path)
        mode = node.get("mode")
        if mode is not None:
            try:
                values["socket_mode"] = parse_mode(mode, "socket.mode")
            except ValueError as err:
                self.problem(value_position(node, "mode"), str(err))
        group = node.get("group")
        if group is not None:
            at = value_position(node, "group")
            if isinstance(group, bool) or not isinstance(group, str | int) or not str(group).strip():
                self.problem(at, f"socket.group: expected a group name or id, got {kind(group)}")
            elif (gid := self.names.group_id(str(group))) is None:
                self.problem(at, f"socket.group: no group {str(group)!r} on this machine")
            else:
                values["socket_group"], values["socket_gid"] = str(group), gid
        return values

    def access(self, doc: Mapping[Any, Any]) -> tuple[AccessRule, ...]:
        """```yaml
        access:
          - {group: swarm, role: poweruser}
          - {user: alice, role: admin}
          - {uid: 1001, role: user}
        ```"""
        node = doc["access"]
        if not isinstance(node, list):
            self.problem(value_position(doc, "access"),
                         f"access: expected a list of rules like {_EXAMPLE_RULE}, got {kind(node)}")
            return ()
        rules = []
        for index in range(len(node)):
            rule = self.rule(node, index)
            if rule is not None:
                rules.append(rule)
        return tuple(rules)

    def rule(self, rules: list[Any], index: int) -> AccessRule | None:
        where = f"access[{index}]"
        at = _item_position(rules, index)
        entry = rules[index]
        if not isinstance(entry, Mapping):
            self.problem(at, f"{where}: expected a mapping like {_EXAMPLE_RULE}, got {kind(entry)}")
            return None
        valid = True
        for key in entry:
            if key not in RULE_KEYS:
                self.problem(key_position(entry, key),
                             f"{where}.{key}: unknown key (expected one of user, group, uid, and role)")
                valid = False
        selectors = [key for key in _SELECTORS if entry.get(key) is not None]
        if len(selectors) != 1:
            got = ", ".join(selectors) or "none"
            self.problem(at, f"{where}: give exactly one of user, group or uid (got {got})")
            valid = False
        role = entry.get("role")
        if not isinstance(role, str) or role not in ROLES:
            self.problem(value_position(entry, "role") if "role" in entry else at,
                         f"{where}.role: expected one of {', '.join(ROLES)}, got {kind(role)}")
            valid = False
        if not valid:
            return None
        key = selectors[0]
        value = entry[key]
        value_at = value_position(entry, key)
        if key == "uid":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                self.problem(value_at, f"{where}.uid: expected a non-negative integer, got {kind(value)}")
                return None
            return AccessRule(uid=value, role=role, written=f"uid {value}")
        if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
            self.problem(value_at, f"{where}.{key}: expected a {key} name, got {kind(value)}")
            return None
        name = str(value)
        ident = self.names.user_id(name) if key == "user" else self.names.group_id(name)
        if ident is None:
            log.warning("%s:%d:%d: %s.%s: no %s %r on this machine: the rule never matches until swarmd is "
                        "restarted", self.path, *value_at, where, key, key, name)
        if key == "user":
            return AccessRule(uid=ident, role=role, written=f"user {name}")
        return AccessRule(gid=ident, role=role, written=f"group {name}")


def parse_listen(value: Any) -> tuple[str, int]:
    """`http_listen`'s value -> (host, port): `HOST:PORT` with an IP address (IPv6 in brackets) or
    `localhost`, or a port alone (on loopback). Port 0 takes any free port (tests). Raises ValueError with
    the message for the located problem."""
    expected = "expected HOST:PORT such as 127.0.0.1:9470 or [::1]:9470, or a port"
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{expected}, got {kind(value)}")
    text = str(value).strip()
    if text.isdigit():
        host, port_text = HTTP_DEFAULT_HOST, text
    elif text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{expected}, got {text!r}")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:  # an IPv6 address must be in brackets: [::1]:9470
            raise ValueError(f"{expected}, got {text!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a port number (1-65535, or 0 for any free port)")
    if host == "localhost":
        host = HTTP_DEFAULT_HOST
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (use 127.0.0.1 for this machine only, 0.0.0.0 or "
                         "[::] for every interface, or one of its addresses)") from None
    if text.startswith("[") != (address.version == 6):
        raise ValueError(f"{expected}, got {text!r}")
    return str(address), int(port_text)


def format_listen(address: tuple[str, int]) -> str:
    """(host, port) as `HOST:PORT`, IPv6 in brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_amount(value: Any, bounds: tuple[int, int], *, sizes: bool) -> int:
    """A whole number within `bounds`; with `sizes`, also text like `2 MiB` or `512k` (1024-based). Raises
    ValueError saying what was expected."""
    expected = f"a whole number{' of bytes (or e.g. 2 MiB)' if sizes else ''} from {bounds[0]} to {bounds[1]}"
    amount: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        amount = value
    elif sizes and isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", value)
        unit = _SIZE_UNITS.get(match[2].lower()) if match else None
        if match and unit is not None:
            amount = int(match[1]) * unit
    if amount is None or not bounds[0] <= amount <= bounds[1]:
        raise ValueError(f"expected {expected}, got {kind(value)}")
    return amount


def _item_position(node: Any, index: int) -> tuple[int, int]:
    """The 1-based (line, col) of item `index` of a round-trip sequence (of the sequence if unknown)."""
    try:
        line, col = node.lc.item(index)
        return line + 1, col + 1
    except Exception:
        return node_position(node)
