"""The daemon config file (`/etc/swarmd/swarmd.yaml`): where the backends file and the socket are, who may
do what, how much to log -- and `DaemonConfig`, the one object that carries the result to the daemon.

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
import logging
import os
import pwd
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from swarmd.api.access import DEFAULT_SOCKET_MODE, ROLES, AccessRule, kind, parse_mode
from swarmd.backends_file import FileInvalid, Problem, key_position, node_position, value_position

log = logging.getLogger("swarmd.config")

DEFAULT_CONFIG = "/etc/swarmd/swarmd.yaml"
CONFIG_ENV = "SWARMD_CONFIG"
DEFAULT_BACKENDS = "/etc/swarmd/backends.yaml"
BACKENDS_ENV = "SWARMD_BACKENDS"
DEFAULT_SOCKET = "/run/swarmd/swarmd.sock"
SOCKET_NAME = "swarmd.sock"
LOG_LEVELS = ("debug", "info", "warning", "error")
#: Top-level keys of the file.
KEYS = ("backends", "socket", "access", "log_level")
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


def _item_position(node: Any, index: int) -> tuple[int, int]:
    """The 1-based (line, col) of item `index` of a round-trip sequence (of the sequence if unknown)."""
    try:
        line, col = node.lc.item(index)
        return line + 1, col + 1
    except Exception:
        return node_position(node)
