"""Who a backend runs as: its `user` and `group` settings, resolved against this machine's user database.

Theory of operation
-------------------
The user database (pwd, grp, getgrouplist: NSS, so perhaps LDAP or SSSD) can block for seconds, and a
backend is spawned on the trio event loop. The two never meet:

* Look-ups (`lookup_user`, `lookup_group`) block, and run only where the backends file is validated:
  `backends_file.parser` checks every non-empty `user` and `group` setting with `check_user` and
  `check_group`, and that parse runs in a worker thread for the daemon's load at start-up, for every reload
  and for the parse-before-write of every API change (and in `swarmd check`, which has no event loop). So a
  name that does not exist is a located problem of the file (`settings.user: no user 'x' on this machine`),
  and every name of a definition the daemon holds has been looked up before that definition can start.
* Every answer goes into a process-wide cache keyed by the text as written (`comfy`, `1001`), which keeps
  the last good answer: a failed look-up never removes one (an LDAP server that is down for a moment must
  not fail the restart of a backend that crashed meanwhile; a name that is really gone is refused by the
  next validation of the file, which a definition naming it must pass again to change). `run_as`, called
  by the spawn on the event loop, only reads that cache.
* A start that uses a cached answer also asks for a fresh look-up in a worker thread (one at a time per
  name), so a change in the user database (a user added to a group) reaches the backend's next start.
* A miss can only be a definition that never went through the parser in this process (a test, a library
  user): that start fails (the backend is `errored`, with a message saying so) and the name is looked up
  in a worker thread, so a person's restart of the backend finds it.

Only root can run a process as another user: `run_as` refuses a `user` or `group` when swarmd's effective
uid is not 0 (at start time of that backend, not at validation: the same file may serve a root daemon and
a developer's unprivileged one).
"""

from __future__ import annotations

import grp
import os
import pwd
import threading
from dataclasses import dataclass

from swarmd.settings import SettingError, describe


class AccountError(ValueError):
    """A backend cannot run as its `user`/`group` now. `str(err)` is the message for its status.

    A ValueError: the spawn's caller reports it as a start that failed (`cannot start ...`)."""


@dataclass(frozen=True)
class User:
    """One user as the database gave it: name, uid, primary gid, every group of its login (the primary
    included, as `os.getgrouplist` gives them) and home directory."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


@dataclass(frozen=True)
class RunAs:
    """The credentials of one spawn: None leaves the daemon's own. `env` goes over the child's environment
    (HOME, USER and LOGNAME of the user; empty when only the group changes)."""

    uid: int | None = None
    gid: int | None = None
    extra_groups: tuple[int, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()


_users: dict[str, User] = {}
_groups: dict[str, int] = {}
_pending: set[tuple[str, str]] = set()  # (kind, text) of look-ups running in a background thread
_pending_lock = threading.Lock()


def _is_id(text: str) -> bool:
    return text.isascii() and text.isdigit()


# -- look-ups (blocking: worker threads and `swarmd check` only) -----------------------------------------------


def lookup_user(text: str) -> User:
    """Look `text` (a user name or a numeric uid) up in the user database, cache and return it. Blocks.
    Raises AccountError when there is no such user (a cached answer is kept)."""
    text = text.strip()
    try:
        entry = pwd.getpwuid(int(text)) if _is_id(text) else pwd.getpwnam(text)
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except (KeyError, OverflowError, ValueError, OSError):
        raise AccountError(f"no user {describe(text)} on this machine") from None
    user = User(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)
    _users[text] = user
    return user


def lookup_group(text: str) -> int:
    """Look `text` (a group name or a numeric gid) up in the group database, cache and return its gid.
    Blocks. Raises AccountError when there is no such group (a cached answer is kept)."""
    text = text.strip()
    try:
        gid = grp.getgrgid(int(text)).gr_gid if _is_id(text) else grp.getgrnam(text).gr_gid
    except (KeyError, OverflowError, ValueError, OSError):
        raise AccountError(f"no group {describe(text)} on this machine") from None
    _groups[text] = gid
    return gid


def check_user(text: str) -> None:
    """The backends file's check of a `user` setting (`backends_file.parser`). Blocks. Raises SettingError."""
    try:
        lookup_user(text)
    except AccountError as err:
        raise SettingError(str(err)) from None


def check_group(text: str) -> None:
    """The backends file's check of a `group` setting (`backends_file.parser`). Blocks. Raises SettingError."""
    try:
        lookup_group(text)
    except AccountError as err:
        raise SettingError(str(err)) from None


def forget() -> None:
    """Empty the cache (tests)."""
    _users.clear()
    _groups.clear()


# -- the spawn's side (never blocks) ---------------------------------------------------------------------


def cached_user(text: str) -> User | None:
    return _users.get(text.strip())


def cached_group(text: str) -> int | None:
    return _groups.get(text.strip())


def run_as(user: str, group: str) -> RunAs:
    """The credentials a backend with settings `user` and `group` ("" = the daemon's) runs with, from the
    cache alone: never a look-up, so it may run on the event loop. Raises AccountError when swarmd is not
    root, or when a name is not in the cache (it is then looked up in a worker thread for the next try)."""
    user, group = user.strip(), group.strip()
    if not user and not group:
        return RunAs()
    if os.geteuid() != 0:
        setting = f"user {user!r}" if user else f"group {group!r}"
        raise AccountError(f"it is set to run as {setting}, which needs swarmd to run as root (it runs as uid "
                           f"{os.geteuid()}); leave 'user' and 'group' empty to run it as swarmd's own user")
    found_user = _users.get(user) if user else None
    found_group = _groups.get(group) if group else None
    missing = [f"user {user!r}"] if user and found_user is None else []
    missing += [f"group {group!r}"] if group and found_group is None else []
    if user:
        _refresh_soon("user", user)
    if group:
        _refresh_soon("group", group)
    if missing:
        raise AccountError(f"{' and '.join(missing)} not looked up yet (the backends file's validation looks "
                           f"them up): looking it up now; restart the backend to try again")
    if found_user is None:
        return RunAs(gid=found_group)
    return RunAs(uid=found_user.uid, gid=found_user.gid if found_group is None else found_group,
                 extra_groups=found_user.groups,
                 env=(("HOME", found_user.home), ("USER", found_user.name), ("LOGNAME", found_user.name)))


def _refresh_soon(kind: str, text: str) -> None:
    """Look `text` up again in a daemon thread (at most one at a time per name: a stuck LDAP server holds
    one thread per name, not one per start). Never blocks."""
    key = (kind, text)
    with _pending_lock:
        if key in _pending:
            return
        _pending.add(key)

    def work() -> None:
        try:
            (lookup_user if kind == "user" else lookup_group)(text)
        except AccountError:
            pass
        finally:
            with _pending_lock:
                _pending.discard(key)

    threading.Thread(target=work, name=f"swarmd-lookup-{kind}", daemon=True).start()


def refreshing() -> bool:
    """Whether a background look-up is running (tests)."""
    with _pending_lock:
        return bool(_pending)
