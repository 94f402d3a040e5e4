"""The daemon config file (`/etc/swarmd/swarmd.yaml`): where the backends file and the socket are, who may
do what, how much to log.

Theory of operation
-------------------
* Which file: `--config FILE` when given (a missing one is an error: the operator named it), else
  `DEFAULT_CONFIG` when it exists, else none (every value from flags and defaults). `$SWARMD_CONFIG`
  replaces `DEFAULT_CONFIG`, for tests and unusual layouts.
* What wins: a command-line flag, then the file, then the default. The socket's default is
  `$RUNTIME_DIRECTORY/swarmd.sock` under systemd (`RuntimeDirectory=swarmd`), else
  `/run/swarmd/swarmd.sock`. Relative paths in the file are relative to the file's directory.
* The `socket:` and `access:` keys belong to the API (`swarmd.api.access.load_access_config` parses them);
  this module owns the other keys, the YAML and the error locations. Every problem is reported as
  `FILE:LINE:COL: message` (ruamel's node positions), like the backends file's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from swarmd.api.access import AccessConfig, load_access_config
from swarmd.backends_file import FileInvalid, Problem, key_position, node_position, value_position

DEFAULT_CONFIG = "/etc/swarmd/swarmd.yaml"
CONFIG_ENV = "SWARMD_CONFIG"
DEFAULT_BACKENDS = "/etc/swarmd/backends.yaml"
DEFAULT_SOCKET = "/run/swarmd/swarmd.sock"
SOCKET_NAME = "swarmd.sock"
LOG_LEVELS = ("debug", "info", "warning", "error")
#: Top-level keys of the file; `socket` and `access` are parsed by the API's access module.
KEYS = ("backends", "socket", "access", "log_level")


class ConfigInvalid(FileInvalid):
    """The config file cannot be used; `problems` are located `FILE:LINE:COL: message` entries."""


@dataclass(frozen=True)
class DaemonConfig:
    """Everything the daemon config file says, with defaults and flags applied by `resolve`.

    `config_path` is the file that was read, or None when there was none.
    """

    backends: str = DEFAULT_BACKENDS
    socket: str = DEFAULT_SOCKET
    socket_mode: int | None = None
    socket_group: str | None = None
    access: AccessConfig = field(default_factory=AccessConfig)
    log_level: str = "info"
    config_path: str | None = None


@dataclass(frozen=True)
class FileValues:
    """What the file itself sets (None: not set)."""

    path: str
    backends: str | None = None
    log_level: str | None = None
    access: AccessConfig = field(default_factory=AccessConfig)


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


def load(path: str) -> FileValues:
    """Read and validate the config file at `path`. Raises ConfigInvalid with every problem found."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else f"not UTF-8 text ({err.reason})"
        raise ConfigInvalid([Problem(path, 1, 1, f"cannot read: {reason}")]) from None
    return parse(path, text)


def parse(path: str, text: str) -> FileValues:
    """Validate the config `text` (read from `path`). Raises ConfigInvalid."""
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ConfigInvalid([Problem(path, line, col, f"YAML syntax: {err.problem or err.context}")]) from None
    except Exception as err:  # ruamel raises a few unmarked errors (e.g. bad unicode)
        raise ConfigInvalid([Problem(path, 1, 1, f"YAML syntax: {err}")]) from None
    if doc is None:
        return FileValues(path)  # an empty (or all-comments) file: every default
    if not isinstance(doc, Mapping):
        raise ConfigInvalid([Problem(path, *node_position(doc), "expected a mapping of settings (backends:, socket:, ...)")])
    base = os.path.dirname(os.path.abspath(path))
    problems: list[Problem] = []
    for key in doc:
        if key not in KEYS:
            problems.append(Problem(path, *key_position(doc, key), f"{key}: unknown key (expected one of {', '.join(KEYS)})"))

    backends = doc.get("backends")
    if backends is not None and (not isinstance(backends, str) or not backends.strip()):
        problems.append(Problem(path, *value_position(doc, "backends"), "backends: expected the path of the backends file"))
        backends = None
    log_level = doc.get("log_level")
    if log_level is not None and (not isinstance(log_level, str) or log_level.lower() not in LOG_LEVELS):
        problems.append(Problem(path, *value_position(doc, "log_level"),
                                f"log_level: expected one of {', '.join(LOG_LEVELS)}, got {log_level!r}"))
        log_level = None

    access = AccessConfig()
    try:
        access = load_access_config({key: doc[key] for key in ("socket", "access") if key in doc})
    except ValueError as err:
        problems.append(Problem(path, *_locate(doc, str(err)), str(err)))
    if problems:
        raise ConfigInvalid(problems)
    if access.socket_path is not None and not os.path.isabs(access.socket_path):
        access = replace(access, socket_path=os.path.join(base, access.socket_path))
    return FileValues(
        path=path,
        backends=os.path.join(base, backends) if backends is not None else None,
        log_level=log_level.lower() if log_level is not None else None,
        access=access,
    )


def resolve(*, config: str | None = None, backends: str | None = None, socket: str | None = None,
            log_level: str | None = None, environ: Mapping[str, str] | None = None) -> DaemonConfig:
    """The daemon's settings from the command line's values (None: not given), the config file and the
    defaults, in that order of precedence. Raises ConfigInvalid."""
    environ = os.environ if environ is None else environ
    path = config_path(config, environ)
    values = load(path) if path is not None else None
    access = values.access if values is not None else AccessConfig()
    return DaemonConfig(
        backends=backends or (values.backends if values else None) or environ.get("SWARMD_BACKENDS") or DEFAULT_BACKENDS,
        socket=socket or access.socket_path or default_socket(environ),
        socket_mode=access.socket_mode,
        socket_group=access.socket_group,
        access=access,
        log_level=log_level or (values.log_level if values else None) or "info",
        config_path=path,
    )


# -- locations -------------------------------------------------------------------------------------------

#: The key path load_access_config puts in front of its messages: `socket.mode`, `access[2].role`, ...
_WHERE = re.compile(r"^(?P<top>[a-z_]+)(?:\[(?P<index>\d+)\])?(?:\.(?P<key>[A-Za-z0-9_-]+))?:")


def _locate(doc: Any, message: str) -> tuple[int, int]:
    """The position of the node a `load_access_config` message is about (its value, or for an unknown
    key the key itself); the top-level key, or 1:1, when the path cannot be followed."""
    match = _WHERE.match(message)
    if match is None or match["top"] not in doc:
        return 1, 1
    top = match["top"]
    node = doc[top]
    position = value_position(doc, top)
    if match["index"] is not None:
        index = int(match["index"])
        if not isinstance(node, list) or index >= len(node):
            return position
        position = _item_pos(node, index)
        node = node[index]
    key = match["key"]
    if key is None or not isinstance(node, Mapping) or key not in node:
        return position
    if "unknown key" in message:
        return key_position(node, key)
    return value_position(node, key)


def _item_pos(node: Any, index: int) -> tuple[int, int]:
    try:
        line, col = node.lc.item(index)
        return line + 1, col + 1
    except Exception:
        return node_position(node)


