"""`swarmd.accounts`: users and groups looked up off the event loop, cached, and read at spawn without a
look-up; the backends file's check of `user`/`group` (`backends_file.parser.MACHINE_CHECKS`)."""

from __future__ import annotations

import grp
import os
import pwd

import pytest

from swarmd import accounts
from swarmd.accounts import AccountError, RunAs
from swarmd.backends_file import FileInvalid, parse
from swarmd.backends_file import parser as file_parser
from swarmd.settings import SettingError
from swarmd.supervise.process import describe_spawn_error, spawn
from swarmd.types import LaunchSpec
from tests.helpers import wait_until

NOBODY = pwd.getpwnam("nobody") if "nobody" in {p.pw_name for p in pwd.getpwall()} else None
needs_nobody = pytest.mark.skipif(NOBODY is None, reason="no user 'nobody' on this machine")
UNKNOWN = "no-such-user-swarmd"


@pytest.fixture(autouse=True)
def empty_cache():
    accounts.forget()
    yield
    wait_until(lambda: not accounts.refreshing(), timeout=10, what="background look-ups done")
    accounts.forget()


def backends(settings: str) -> str:
    return f"backends:\n  0:\n    type: process\n    settings:\n      command: sleep 1\n{settings}"


# -- look-ups ----------------------------------------------------------------------------------------------


def test_a_user_by_name_or_uid():
    root = accounts.lookup_user("root")
    assert (root.name, root.uid, root.gid, root.home) == ("root", 0, 0, pwd.getpwuid(0).pw_dir)
    assert root.groups == tuple(os.getgrouplist("root", 0))
    assert accounts.lookup_user("0") == root
    assert accounts.cached_user("root") == root and accounts.cached_user("0") == root


@needs_nobody
def test_nobody_and_its_login_groups():
    user = accounts.lookup_user("nobody")
    assert (user.uid, user.gid, user.home) == (NOBODY.pw_uid, NOBODY.pw_gid, NOBODY.pw_dir)
    assert NOBODY.pw_gid in user.groups


def test_a_group_by_name_or_gid():
    name = grp.getgrgid(0).gr_name
    assert accounts.lookup_group(name) == 0
    assert accounts.lookup_group("0") == 0
    assert accounts.cached_group(name) == 0


def test_an_unknown_user_or_group_is_refused_by_name():
    with pytest.raises(AccountError, match=f"no user '{UNKNOWN}' on this machine"):
        accounts.lookup_user(UNKNOWN)
    with pytest.raises(SettingError, match=f"no user '{UNKNOWN}' on this machine"):
        accounts.check_user(UNKNOWN)
    with pytest.raises(SettingError, match="no user '4000000000' on this machine"):
        accounts.check_user("4000000000")  # syntax allows 10 digits; beyond uid_t it is simply not there
    with pytest.raises(SettingError, match="no group 'no-such-group-swarmd' on this machine"):
        accounts.check_group("no-such-group-swarmd")
    assert accounts.cached_user(UNKNOWN) is None


def test_a_failed_look_up_keeps_the_last_good_answer(monkeypatch):
    root = accounts.lookup_user("root")

    def down(name):
        raise KeyError(name)  # what pwd answers when NSS cannot reach LDAP

    monkeypatch.setattr(pwd, "getpwnam", down)
    with pytest.raises(AccountError):
        accounts.lookup_user("root")
    assert accounts.cached_user("root") == root


# -- the spawn's side: never a look-up ---------------------------------------------------------------------


def test_nothing_set_is_the_daemons_own_credentials():
    assert accounts.run_as("", "") == RunAs()


def test_run_as_needs_root(monkeypatch):
    accounts.lookup_user("root")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(AccountError, match=r"run as user 'root', which needs swarmd to run as root \(it runs as "
                                           r"uid 1000\)"):
        accounts.run_as("root", "")
    with pytest.raises(AccountError, match="run as group 'root', which needs swarmd to run as root"):
        accounts.run_as("", "root")


@pytest.mark.skipif(os.geteuid() != 0, reason="run_as answers only as root")
def test_run_as_reads_the_cache_and_never_looks_up(monkeypatch):
    accounts.lookup_user("root")
    accounts.lookup_group("0")
    expected = RunAs(uid=0, gid=0, extra_groups=tuple(os.getgrouplist("root", 0)),
                     env=(("HOME", pwd.getpwuid(0).pw_dir), ("USER", "root"), ("LOGNAME", "root")))
    calls = []
    for module, name in ((pwd, "getpwnam"), (pwd, "getpwuid"), (grp, "getgrnam"), (grp, "getgrgid"),
                         (os, "getgrouplist")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _n=name: calls.append(_n) or _real(*a))
    monkeypatch.setattr(accounts, "_refresh_soon", lambda kind, text: None)  # (the background refresh)
    assert accounts.run_as("root", "") == expected
    assert accounts.run_as("root", "0").gid == 0
    assert accounts.run_as("", "0") == RunAs(gid=0)  # a group alone: the daemon's user, that primary group
    assert calls == []


@pytest.mark.skipif(os.geteuid() != 0, reason="run_as answers only as root")
def test_a_miss_fails_the_start_and_looks_the_name_up_for_the_next():
    with pytest.raises(AccountError, match="user 'root' not looked up yet"):
        accounts.run_as("root", "")
    wait_until(lambda: accounts.cached_user("root") is not None, timeout=10, what="the background look-up")
    assert accounts.run_as("root", "").uid == 0


def test_spawn_refuses_user_without_root_with_a_clear_message(monkeypatch):
    accounts.lookup_user("root")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    spec = LaunchSpec(argv=("true",), user="root")
    fds_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(AccountError) as caught:
        spawn(spec, None)
    assert set(os.listdir("/proc/self/fd")) == fds_before  # refused before any pipe is made
    assert describe_spawn_error(caught.value, spec).startswith(
        "cannot start 'true': it is set to run as user 'root', which needs swarmd to run as root")


# -- where the file is validated ---------------------------------------------------------------------------


def test_an_unknown_user_is_a_located_problem_of_the_file():
    text = backends(f"      user: {UNKNOWN}\n      group: no-such-group-swarmd\n")
    with pytest.raises(FileInvalid) as caught:
        parse("b.yaml", text)
    assert [str(p) for p in caught.value.problems] == [
        f"b.yaml:6:7: settings.user: no user '{UNKNOWN}' on this machine",
        "b.yaml:7:7: settings.group: no group 'no-such-group-swarmd' on this machine",
    ]


def test_validation_fills_the_cache_the_spawn_reads():
    parse("b.yaml", backends("      user: root\n      group: '0'\n"))
    assert accounts.cached_user("root").uid == 0
    assert accounts.cached_group("0") == 0


def test_each_name_is_looked_up_once_per_parse(monkeypatch):
    asked = []

    def check(value):
        asked.append(value)
        accounts.check_user(value)

    monkeypatch.setitem(file_parser.MACHINE_CHECKS, "user", check)
    text = "backends:\n" + "".join(
        f"  {i}:\n    type: process\n    settings:\n      user: {UNKNOWN if i == 0 else 'root'}\n" for i in range(5))
    with pytest.raises(FileInvalid):  # invalid: validated twice (fast, then for positions), asked once
        parse("b.yaml", text)
    assert sorted(asked) == sorted([UNKNOWN, "root"])


def test_an_empty_user_is_not_looked_up(monkeypatch):
    monkeypatch.setitem(file_parser.MACHINE_CHECKS, "user", lambda value: pytest.fail("looked up"))
    parse("b.yaml", backends("      user: ''\n"))
