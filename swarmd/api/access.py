"""Who may do what: peer credentials -> role -> permission flags.

Theory of operation
-------------------
swarmd has no sessions or passwords: the kernel tells us who is on the other end of the unix socket
(`SO_PEERCRED`: pid, uid, gid). That identity maps to one of SwarmUI's roles, and each role carries
SwarmUI's default permission flags:

* root (uid 0) and the daemon's own uid are always `owner`, which holds every flag (`"*"`);
* otherwise the daemon config's `access:` rules are tried in order and the first that matches gives the
  role (a rule matches by user name, by group -- primary or supplementary -- or by uid);
* anyone else has no role and no flags, so every flagged route answers `bad_permissions`.

A caller whose credentials could not be read is treated like "anyone else": denied.

Trust model: a role that may add or edit backends may make the daemon run any command as the daemon's
user (like SwarmUI's StartScript), so those flags belong to ADMINS only.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ROLES: tuple[str, ...] = ("guest", "user", "poweruser", "admin", "owner")
OWNER = "owner"
ADMINS = frozenset({"owner", "admin"})
POWERUSERS = frozenset({"owner", "admin", "poweruser"})

#: Each permission flag swarmd checks, with the roles that hold it by default (SwarmUI's defaults).
FLAGS: dict[str, frozenset[str]] = {
    "view_backends_list": POWERUSERS,
    "add_remove_backends": ADMINS,
    "edit_backends": ADMINS,
    "restart_backends": POWERUSERS,
    "toggle_backends": ADMINS,
    "control_mem_clean": POWERUSERS,
    "view_logs": ADMINS,
    # SwarmUI's default for the resource panel; it shows CPU/RAM/GPU load, nothing secret.
    "read_server_info_panels": POWERUSERS,
}

DEFAULT_SOCKET_MODE = 0o660


@dataclass(frozen=True)
class PeerCred:
    """The kernel's word on who connected: SO_PEERCRED, plus SO_PEERGROUPS when the kernel gives it."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] | None = None


@dataclass(frozen=True)
class AccessRule:
    """One `access:` entry: exactly one of user / group / uid, and the role it grants."""

    user: str | None = None
    group: str | None = None
    uid: int | None = None
    role: str = "user"

    def matches(self, uid: int, gids: Iterable[int], user_name: str | None) -> bool:
        if self.uid is not None:
            return uid == self.uid
        if self.user is not None:
            return user_name is not None and user_name == self.user
        if self.group is not None:
            gid = _group_id(self.group)
            return gid is not None and gid in set(gids)
        return False


@dataclass(frozen=True)
class AccessConfig:
    """The `socket:` and `access:` parts of the daemon config.

    `socket_path`/`socket_mode`/`socket_group` are None where the config does not set them (the daemon's
    command line or defaults decide).
    """

    rules: list[AccessRule] = field(default_factory=list)
    socket_path: str | None = None
    socket_mode: int | None = None
    socket_group: str | None = None

    def role_for(self, uid: int, gid: int, groups: Iterable[int] | None = None) -> str | None:
        """The role of a peer, or None (no permissions). Root and the daemon's own uid are owner.

        `groups` are the peer's supplementary groups as the kernel reported them; when None they are looked
        up from the user database (the groups the user would get at login).
        """
        if uid == 0 or uid == os.getuid():
            return OWNER
        if not self.rules:
            return None
        user_name = _user_name(uid)
        if groups is None:
            gids = set(_login_groups(user_name, gid)) if user_name else {gid}
        else:
            gids = {gid, *groups}
        for rule in self.rules:
            if rule.matches(uid, gids, user_name):
                return rule.role
        return None


def role_for(uid: int, gid: int, groups: Iterable[int] | None = None, config: AccessConfig | None = None) -> str | None:
    """Module-level shortcut for `AccessConfig.role_for` (no config: only root and our own uid)."""
    return (config or AccessConfig()).role_for(uid, gid, groups)


def has_flag(role: str | None, flag: str | None) -> bool:
    """True when `role` holds `flag`. A route without a flag is open to everyone who can connect."""
    if flag is None:
        return True
    if role is None:
        return False
    if role == OWNER:
        return True
    return role in FLAGS.get(flag, frozenset())


def permissions(role: str | None) -> list[str]:
    """The flags a role holds, as GetNewSession lists them (owner: ["*"], like SwarmUI)."""
    if role is None:
        return []
    if role == OWNER:
        return ["*"]
    return sorted(flag for flag, roles in FLAGS.items() if role in roles)


def user_label(uid: int) -> str:
    """A user's name for display (GetNewSession's user_id), or `uid-N` when it has none."""
    return _user_name(uid) or f"uid-{uid}"


# -- the daemon config ---------------------------------------------------------------------------------


def load_access_config(data: Mapping[str, Any] | None) -> AccessConfig:
    """Parse the `socket:` and `access:` parts of the daemon config (the whole config mapping is passed;
    other keys are left to their owners).

    ```yaml
    socket:
      path: /run/swarmd/swarmd.sock
      mode: "0660"          # quoted: YAML 1.2 reads 0660 as the decimal number 660
      group: swarm
    access:
      - {group: swarm, role: poweruser}
      - {user: alice, role: admin}
      - {uid: 1001, role: user}
    ```

    Raises ValueError with a message naming the key and what was expected.
    """
    if data is None:
        return AccessConfig()
    if not isinstance(data, Mapping):
        raise ValueError(f"config: expected a mapping at the top level, got {_kind(data)}")
    socket_path = socket_mode = socket_group = None
    sock = data.get("socket")
    if sock is not None:
        if not isinstance(sock, Mapping):
            raise ValueError(f"socket: expected a mapping with path, mode, group; got {_kind(sock)}")
        for key in sock:
            if key not in ("path", "mode", "group"):
                raise ValueError(f"socket.{key}: unknown key (expected path, mode, group)")
        if sock.get("path") is not None:
            if not isinstance(sock["path"], str) or not sock["path"]:
                raise ValueError(f"socket.path: expected a file path, got {_kind(sock['path'])}")
            socket_path = sock["path"]
        if sock.get("mode") is not None:
            socket_mode = parse_mode(sock["mode"], "socket.mode")
        if sock.get("group") is not None:
            group = sock["group"]
            if isinstance(group, bool) or not isinstance(group, str | int):
                raise ValueError(f"socket.group: expected a group name or id, got {_kind(group)}")
            socket_group = str(group)
    rules_raw = data.get("access")
    rules: list[AccessRule] = []
    if rules_raw is not None:
        if not isinstance(rules_raw, list):
            raise ValueError(f"access: expected a list of rules like {{user: alice, role: admin}}, got {_kind(rules_raw)}")
        for index, entry in enumerate(rules_raw):
            rules.append(_parse_rule(entry, f"access[{index}]"))
    return AccessConfig(rules=rules, socket_path=socket_path, socket_mode=socket_mode, socket_group=socket_group)


def parse_mode(value: Any, where: str = "mode") -> int:
    """A permission mode written as an octal string ("0660", "660", "0o660") -> int. Raises ValueError.

    An unquoted YAML number is refused: YAML 1.2 reads `0660` as 660 and `0o660` as 432, so the meaning
    cannot be recovered from the number.
    """
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"{where}: write the mode as a quoted octal string such as \"0660\" "
                         f"(got {_kind(value)}; YAML 1.2 reads an unquoted 0660 as the decimal number 660)")
    text = value.strip().lower()
    if text.startswith("0o"):
        text = text[2:]
    if not text or any(ch not in "01234567" for ch in text):
        raise ValueError(f"{where}: expected an octal mode such as \"0660\", got {value!r}")
    mode = int(text, 8)
    if mode > 0o777:
        raise ValueError(f"{where}: expected permission bits only (at most 0777), got {value!r}")
    return mode


def _parse_rule(entry: Any, where: str) -> AccessRule:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a mapping like {{user: alice, role: admin}}, got {_kind(entry)}")
    for key in entry:
        if key not in ("user", "group", "uid", "role"):
            raise ValueError(f"{where}.{key}: unknown key (expected one of user, group, uid, and role)")
    selectors = [key for key in ("user", "group", "uid") if entry.get(key) is not None]
    if len(selectors) != 1:
        raise ValueError(f"{where}: give exactly one of user, group or uid (got {', '.join(selectors) or 'none'})")
    role = entry.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}.role: expected one of {', '.join(ROLES)}, got {role!r}")
    key = selectors[0]
    value = entry[key]
    if key == "uid":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}.uid: expected a non-negative integer, got {value!r}")
        return AccessRule(uid=value, role=role)
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
        raise ValueError(f"{where}.{key}: expected a {key} name, got {value!r}")
    if key == "user":
        return AccessRule(user=str(value), role=role)
    return AccessRule(group=str(value), role=role)


# -- user database helpers ---------------------------------------------------------------------------


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _group_id(group: str) -> int | None:
    """A group name (or a numeric id written as text) -> gid; None when no such group exists."""
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return int(group) if group.isdigit() else None


def _login_groups(user_name: str, gid: int) -> list[int]:
    try:
        return os.getgrouplist(user_name, gid)
    except OSError:
        return [gid]


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
