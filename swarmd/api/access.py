"""Who may do what: peer credentials -> role -> permission flags.

Theory of operation
-------------------
swarmd has no sessions or passwords: the kernel tells us who is on the other end of the unix socket
(`SO_PEERCRED`: pid, uid, gid, and with `SO_PEERGROUPS` the supplementary groups). That identity maps to
one of SwarmUI's roles, and each role carries SwarmUI's default permission flags:

* root (uid 0) and the daemon's own uid are always `owner`, which holds every flag (`"*"`);
* otherwise the daemon config's `access:` rules are tried in order and the first that matches gives the
  role (a rule matches by uid -- `user:` names are resolved to uids when the config is loaded -- or by
  group, primary or supplementary -- `group:` names are resolved to gids at load too);
* anyone else has no role and no flags, so every flagged route answers `bad_permissions`.

A caller whose credentials could not be read is treated like "anyone else": denied.

Nothing here blocks the event loop. Matching a rule is integer comparison. The user database (pwd, grp,
getgrouplist: LDAP or SSSD behind NSS can take seconds) is consulted only when the kernel did not give
the peer's groups (kernels before 4.13) and a rule needs them, or for GetNewSession's user name; those
look-ups run in worker threads (at most `USER_DB_THREADS` at a time) and their answers are cached for
`CACHE_SECONDS`.

Trust model: a role that may add or edit backends may make the daemon run any command as the daemon's
user (like SwarmUI's StartScript), so those flags belong to ADMINS only.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio

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
    "read_server_info_panels": ADMINS,
}

DEFAULT_SOCKET_MODE = 0o660
#: How long a user-database answer (login groups, user name) is reused.
CACHE_SECONDS = 60.0
#: The most uids whose answers are kept (a flood of distinct callers cannot grow the cache without bound).
CACHE_SIZE = 1024
#: The most user-database look-ups running at once (a stuck LDAP server must not take every worker thread).
USER_DB_THREADS = 4


@dataclass(frozen=True)
class PeerCred:
    """The kernel's word on who connected: SO_PEERCRED, plus SO_PEERGROUPS when the kernel gives it."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] | None = None


@dataclass(frozen=True)
class AccessRule:
    """One `access:` entry, with its user or group name already resolved (by `swarmd.config`, at load).

    Exactly one of `uid` / `gid` is set, or neither: a rule whose user or group did not exist when the
    config was loaded, which never matches. `written` is the selector as the config wrote it
    ("user alice", "group swarm", "uid 1001"), for messages.
    """

    uid: int | None = None
    gid: int | None = None
    role: str = "user"
    written: str = ""

    def matches(self, uid: int, gids: Iterable[int]) -> bool:
        """True when a caller with `uid` and groups `gids` (primary and supplementary) matches."""
        if self.uid is not None:
            return uid == self.uid
        if self.gid is not None:
            return self.gid in gids
        return False

    @property
    def needs_groups(self) -> bool:
        return self.uid is None and self.gid is not None


def role_of(rules: Iterable[AccessRule], uid: int, gids: Iterable[int],
            owner_uid: int | None = None) -> str | None:
    """The role of a caller with `uid` and groups `gids` under `rules` (first match wins), or None.

    Root and `owner_uid` (default: the daemon's own uid) are owner. Pure: no look-up.
    """
    if uid == 0 or uid == (os.getuid() if owner_uid is None else owner_uid):
        return OWNER
    gid_set = frozenset(gids)
    for rule in rules:
        if rule.matches(uid, gid_set):
            return rule.role
    return None


class Access:
    """Resolves a peer to its role under the config's `access:` rules, without blocking the event loop.

    Owns a cache of the user database's answers (login groups per uid), used only for peers whose
    supplementary groups the kernel did not give.
    """

    def __init__(
        self,
        rules: Iterable[AccessRule] = (),
        *,
        owner_uid: int | None = None,
        login_groups: Callable[[int], tuple[int, ...] | None] | None = None,
        cache_seconds: float = CACHE_SECONDS,
        cache_size: int = CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`login_groups(uid)` (blocking; run in a thread) gives the groups the user gets at login, or None
        when the uid has no user; the default asks the system's user database."""
        self.rules: tuple[AccessRule, ...] = tuple(rules)
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        self._login_groups = login_groups or lookup_login_groups
        self._needs_groups = any(rule.needs_groups for rule in self.rules)
        self._groups_cache: _Cache[tuple[int, ...] | None] = _Cache(cache_seconds, cache_size, clock)

    @classmethod
    def of(cls, value: Access | Iterable[AccessRule] | None) -> Access:
        """`value` itself when it is an Access, else an Access over those rules (None: no rules)."""
        if isinstance(value, Access):
            return value
        return cls(value or ())

    async def role(self, peer: PeerCred) -> str | None:
        """The role of `peer`, or None (no permissions).

        With the peer's supplementary groups from the kernel (`peer.groups`), or when no rule names a
        group, this never looks anything up. Otherwise the user's login groups are looked up in a worker
        thread (cached per uid for `cache_seconds`).
        """
        if peer.uid == 0 or peer.uid == self.owner_uid:
            return OWNER
        if not self.rules:
            return None
        if peer.groups is not None:
            gids: Iterable[int] = (peer.gid, *peer.groups)
        elif self._needs_groups:
            gids = (peer.gid, *(await self.login_groups(peer.uid) or ()))
        else:
            gids = (peer.gid,)
        return role_of(self.rules, peer.uid, gids, self.owner_uid)

    async def login_groups(self, uid: int) -> tuple[int, ...] | None:
        """The groups `uid`'s user gets at login (None: no such user); cached, looked up in a thread."""
        found, groups = self._groups_cache.get(uid)
        if not found:
            groups = await _in_thread(self._login_groups, uid)
            self._groups_cache.put(uid, groups)
        return groups


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


async def user_label(uid: int) -> str:
    """A user's name for display (GetNewSession's user_id), or `uid-N` when it has none.

    Looked up in a worker thread and cached for CACHE_SECONDS.
    """
    found, name = _names.get(uid)
    if not found:
        name = await _in_thread(lookup_user_name, uid)
        _names.put(uid, name)
    return name or f"uid-{uid}"


def parse_mode(value: Any, where: str = "mode") -> int:
    """A permission mode written as an octal string ("0660", "660", "0o660") -> int. Raises ValueError.

    An unquoted YAML number is refused: YAML 1.2 reads `0660` as 660 and `0o660` as 432, so the meaning
    cannot be recovered from the number.
    """
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"{where}: write the mode as a quoted octal string such as \"0660\" "
                         f"(got {kind(value)}; YAML 1.2 reads an unquoted 0660 as the decimal number 660)")
    text = value.strip().lower()
    if text.startswith("0o"):
        text = text[2:]
    if not text or any(ch not in "01234567" for ch in text):
        raise ValueError(f"{where}: expected an octal mode such as \"0660\", got {value!r}")
    mode = int(text, 8)
    if mode > 0o777:
        raise ValueError(f"{where}: expected permission bits only (at most 0777), got {value!r}")
    return mode


def kind(value: Any) -> str:
    """How a config value is described in a message: `number 660`, `'text'`, `a list`, ..."""
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


# -- the user database (blocking: worker threads only) ------------------------------------------------


def lookup_login_groups(uid: int) -> tuple[int, ...] | None:
    """The groups `uid`'s user gets at login (primary first), or None when the uid has no user. BLOCKS."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return None
    try:
        return tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        return (entry.pw_gid,)


def lookup_user_name(uid: int) -> str | None:
    """The name of `uid`'s user, or None. BLOCKS."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("swarmd_user_db_limiter")

T = TypeVar("T")


async def _in_thread(function: Callable[[int], T], uid: int) -> T:
    """`function(uid)` in a worker thread; a cancelled caller abandons it (the thread finishes alone)."""
    try:
        limiter = _limiter.get()
    except LookupError:
        limiter = trio.CapacityLimiter(USER_DB_THREADS)
        _limiter.set(limiter)
    return await trio.to_thread.run_sync(function, uid, limiter=limiter, abandon_on_cancel=True,
                                         thread_name=f"swarmd user database look-up (uid {uid})")


class _Cache(Generic[T]):
    """uid -> answer, each kept `seconds`; at most `size` entries (the oldest go first)."""

    def __init__(self, seconds: float, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.size = size
        self.clock = clock
        self._entries: dict[int, tuple[float, T]] = {}

    def get(self, uid: int) -> tuple[bool, T | None]:
        entry = self._entries.get(uid)
        if entry is None:
            return False, None
        if entry[0] <= self.clock():
            del self._entries[uid]
            return False, None
        return True, entry[1]

    def put(self, uid: int, value: T) -> None:
        self._entries.pop(uid, None)
        while len(self._entries) >= self.size:
            del self._entries[next(iter(self._entries))]  # dicts keep insertion order: the oldest
        self._entries[uid] = (self.clock() + self.seconds, value)

    def clear(self) -> None:
        self._entries.clear()


_names: _Cache[str | None] = _Cache(CACHE_SECONDS, CACHE_SIZE)
