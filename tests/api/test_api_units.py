"""Pure parts of the API: parameter coercion, roles and flags, role resolution, /proc readers."""

from __future__ import annotations

import os
import threading

import pytest
import trio

from swarmd.api import access
from swarmd.api.access import Access, AccessRule, PeerCred, parse_mode
from swarmd.api.params import ApiError, Param, coerce_params
from swarmd.api.resources import read_cpu_times, read_meminfo
from swarmd.api.routes import ROUTES

# -- coercion ----------------------------------------------------------------------------------------------

INT = (Param("n", "Int32"),)
BOOL = (Param("b", "Boolean"),)


@pytest.mark.parametrize(("raw", "value"), [(5, 5), ("5", 5), (" -7 ", -7), ("+3", 3), (2**31 - 1, 2**31 - 1),
                                            (-(2**31), -(2**31))])
def test_int32_accepts_what_int_tryparse_accepts(raw: object, value: int) -> None:
    assert coerce_params(INT, {"n": raw}) == {"n": value}


@pytest.mark.parametrize(("raw", "value"), [(5.0, 5), (-3.0, -3), (0.0, 0)])
def test_int32_takes_a_whole_json_double_as_swarmui_does(raw: object, value: int) -> None:
    # JToken.ToString() of 5.0 is "5" (.NET's double formatting), which int.TryParse accepts.
    assert coerce_params(INT, {"n": raw}) == {"n": value}


@pytest.mark.parametrize(("raw", "text"), [(5.5, "5.5"), (1e20, "1E+20"), ("5.5", "5.5"), ("5.0", "5.0"),
                                           (2**31, str(2**31)), (True, "True"),
                                           (None, ""), ("", ""), ([1], "[1]"), ("1e3", "1e3"), ("0x10", "0x10")])
def test_int32_refuses_the_rest(raw: object, text: str) -> None:
    with pytest.raises(ApiError) as err:
        coerce_params(INT, {"n": raw})
    assert err.value.message == f"Invalid value '{text}' for parameter 'n', must be type 'Int32'"
    assert err.value.body() == {"error": err.value.message}


@pytest.mark.parametrize(("raw", "value"), [(True, True), ("True", True), ("false", False), (" TRUE ", True),
                                            (False, False)])
def test_boolean_accepts_what_bool_tryparse_accepts(raw: object, value: bool) -> None:
    assert coerce_params(BOOL, {"b": raw}) == {"b": value}


@pytest.mark.parametrize(("raw", "text"), [(1, "1"), (0, "0"), ("yes", "yes"), (None, ""), ("t", "t")])
def test_boolean_refuses_the_rest(raw: object, text: str) -> None:
    with pytest.raises(ApiError, match=f"^Invalid value '{text}' for parameter 'b', must be type 'Boolean'$"):
        coerce_params(BOOL, {"b": raw})


def test_string_takes_anything_as_text() -> None:
    params = (Param("s", "String"),)
    assert coerce_params(params, {"s": 5}) == {"s": "5"}
    assert coerce_params(params, {"s": None}) == {"s": ""}
    assert coerce_params(params, {"s": False}) == {"s": "False"}


def test_defaults_missing_and_declaration_order() -> None:
    params = (Param("a", "Int32"), Param("b", "Boolean", False), Param("c", "String"))
    assert coerce_params(params, {"a": "1", "c": "x", "other": object()}) == {"a": 1, "b": False, "c": "x"}
    with pytest.raises(ApiError, match="^Missing required parameter 'a'$"):
        coerce_params(params, {"b": "nope"})
    with pytest.raises(ApiError, match="parameter 'a'"):  # the first declared problem wins
        coerce_params(params, {"a": "x", "b": "y"})


def test_every_route_is_registered_under_its_lowercase_name() -> None:
    expected = {"ListBackendTypes", "ListBackends", "AddNewBackend", "EditBackend", "DeleteBackend",
                "ToggleBackend", "RestartBackends", "FreeBackendMemory", "GetNewSession", "ListLogTypes",
                "ListRecentLogMessages", "GetServerResourceInfo", "GetDaemonStatus"}
    assert {route.name for route in ROUTES.values()} == expected
    assert all(key == route.name.lower() for key, route in ROUTES.items())


def test_route_flags() -> None:
    flags = {route.name: route.flag for route in ROUTES.values()}
    assert flags["ListBackends"] == flags["ListBackendTypes"] == "view_backends_list"
    assert flags["AddNewBackend"] == flags["DeleteBackend"] == "add_remove_backends"
    assert flags["EditBackend"] == "edit_backends"
    assert flags["ToggleBackend"] == "toggle_backends"
    assert flags["RestartBackends"] == "restart_backends"
    assert flags["FreeBackendMemory"] == "control_mem_clean"
    assert flags["ListLogTypes"] == flags["ListRecentLogMessages"] == "view_logs"
    assert flags["GetServerResourceInfo"] == "read_server_info_panels"
    assert flags["GetNewSession"] is None


# -- roles and flags ---------------------------------------------------------------------------------------


def test_owner_admin_poweruser_flags() -> None:
    assert access.permissions("owner") == ["*"]
    assert access.has_flag("owner", "anything at all")
    assert access.has_flag("admin", "edit_backends") and access.has_flag("admin", "view_logs")
    assert access.has_flag("poweruser", "view_backends_list") and access.has_flag("poweruser", "restart_backends")
    assert not access.has_flag("poweruser", "edit_backends")
    assert not access.has_flag("poweruser", "add_remove_backends")
    assert not access.has_flag("poweruser", "toggle_backends")
    assert not access.has_flag("user", "view_backends_list")
    assert not access.has_flag(None, "view_backends_list")
    assert access.has_flag(None, None)  # GetNewSession
    assert access.permissions(None) == []
    assert "edit_backends" not in access.permissions("poweruser")


async def test_root_and_own_uid_are_owner_without_rules() -> None:
    nobody = Access()
    assert await nobody.role(PeerCred(1, 0, 0)) == "owner"
    assert await nobody.role(PeerCred(1, os.getuid(), os.getgid())) == "owner"
    assert await nobody.role(PeerCred(1, 65534, 65534, ())) is None
    assert await nobody.role(PeerCred(1, 65534, 65534, None)) is None
    assert await Access(owner_uid=4000).role(PeerCred(1, 4000, 4000)) == "owner"


RULES = (
    AccessRule(uid=4242, role="admin", written="uid 4242"),
    AccessRule(uid=65534, role="poweruser", written="user nobody"),
    AccessRule(gid=4343, role="user", written="group 4343"),
    AccessRule(uid=4242, role="guest", written="uid 4242"),
    AccessRule(role="admin", written="user bob"),  # bob did not exist at load: never matches
)


async def test_rules_match_uid_and_groups_first_wins() -> None:
    def no_lookups(uid: int) -> tuple[int, ...] | None:
        raise AssertionError(f"looked up uid {uid} although the kernel gave the groups")

    rules = Access(RULES, login_groups=no_lookups)
    assert await rules.role(PeerCred(1, 4242, 1, ())) == "admin"
    assert await rules.role(PeerCred(1, 65534, 65534, ())) == "poweruser"
    assert await rules.role(PeerCred(1, 5000, 5000, (7, 4343))) == "user"  # a supplementary group
    assert await rules.role(PeerCred(1, 5000, 4343, ())) == "user"  # the primary group
    assert await rules.role(PeerCred(1, 5000, 5000, ())) is None
    assert access.role_of(RULES, 5000, [5000, 4343]) == "user"
    assert access.role_of(RULES, 5000, [5000]) is None


async def test_login_groups_are_looked_up_in_a_thread_only_without_peer_groups_and_cached() -> None:
    calls: list[tuple[int, int]] = []
    now = [0.0]

    def login_groups(uid: int) -> tuple[int, ...] | None:
        calls.append((uid, threading.get_ident()))
        return {5000: (5000, 4343)}.get(uid)

    rules = Access(RULES, login_groups=login_groups, cache_seconds=60, cache_size=2, clock=lambda: now[0])
    assert await rules.role(PeerCred(1, 5000, 5000, None)) == "user"
    assert await rules.role(PeerCred(2, 5000, 5000, None)) == "user"
    assert await rules.role(PeerCred(3, 5001, 5001, None)) is None  # no such user: its own gid only
    assert await rules.role(PeerCred(3, 5001, 4343, None)) == "user"
    assert [uid for uid, _ in calls] == [5000, 5001]  # once per uid while cached
    assert all(thread != threading.get_ident() for _, thread in calls)  # never on the event loop's thread
    now[0] = 61.0
    assert await rules.role(PeerCred(1, 5000, 5000, None)) == "user"
    assert [uid for uid, _ in calls] == [5000, 5001, 5000]  # expired: looked up again
    for uid in (6000, 6001, 6002):  # the cache keeps at most 2 uids
        await rules.role(PeerCred(1, uid, uid, None))
    assert len(rules._groups_cache._entries) == 2
    # No group rule: the uid decides alone, nothing to look up.
    uid_only = Access((AccessRule(uid=4242, role="admin"),), login_groups=login_groups)
    assert await uid_only.role(PeerCred(1, 4242, 1, None)) == "admin"
    assert await uid_only.role(PeerCred(1, 9000, 9000, None)) is None
    assert len(calls) == 6


async def test_a_stuck_user_database_does_not_block_the_event_loop() -> None:
    release = threading.Event()

    def stuck(uid: int) -> tuple[int, ...] | None:
        release.wait(10)
        return (4343,)

    rules = Access(RULES, login_groups=stuck)
    ticks = 0
    async with trio.open_nursery() as nursery:
        async def ticker() -> None:
            nonlocal ticks
            while True:
                await trio.sleep(0.01)
                ticks += 1

        nursery.start_soon(ticker)
        with trio.move_on_after(0.3) as scope:
            await rules.role(PeerCred(1, 5000, 5000, None))
        assert scope.cancelled_caught  # the caller can give up: the thread is abandoned
        assert ticks >= 10  # the loop kept running meanwhile
        nursery.cancel_scope.cancel()
    release.set()


async def test_user_label() -> None:
    assert await access.user_label(0) == "root"
    assert await access.user_label(65534) == "nobody"
    assert await access.user_label(2**31 - 7) == f"uid-{2**31 - 7}"


def test_rules_come_resolved_from_the_config(tmp_path) -> None:
    from swarmd import config

    path = tmp_path / "swarmd.yaml"
    path.write_text("access:\n  - {user: root, role: admin}\n  - {group: nogroup, role: poweruser}\n"
                    "  - {uid: 1001, role: user}\n")
    loaded = config.load(str(path), environ={"SWARMD_CONFIG": "/nonexistent"})
    assert loaded.access == (AccessRule(uid=0, role="admin", written="user root"),
                             AccessRule(gid=65534, role="poweruser", written="group nogroup"),
                             AccessRule(uid=1001, role="user", written="uid 1001"))


@pytest.mark.parametrize(("value", "message"), [
    (660, "mode: write the mode as a quoted octal string"),
    (True, "mode: write the mode as a quoted octal string"),
    ("0999", "mode: expected an octal mode"),
    ("", "mode: expected an octal mode"),
    ("07777", "mode: expected permission bits only"),
])
def test_parse_mode_errors(value: object, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message):
        parse_mode(value)


def test_parse_mode() -> None:
    assert parse_mode("0660") == parse_mode("660") == parse_mode("0o660") == 0o660
    assert parse_mode(" 0O600 ") == 0o600


# -- /proc --------------------------------------------------------------------------------------------------


def test_proc_readers(tmp_path) -> None:
    times = read_cpu_times()
    assert times is not None and 0 <= times.busy <= times.total
    mem = read_meminfo()
    assert mem is not None and mem["total"] == mem["used"] + mem["free"]
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:  1000 kB\nMemFree:  100 kB\nMemAvailable:  400 kB\n")
    assert read_meminfo(str(fake)) == {"total": 1024000, "used": 614400, "free": 409600}
    assert read_meminfo(str(tmp_path / "missing")) is None
    assert read_cpu_times(str(tmp_path / "missing")) is None


# -- swarmctl's client ----------------------------------------------------------------------------------------


def test_client_resends_when_an_idle_connection_was_closed(tmp_path) -> None:
    """The daemon closes idle keep-alive connections (hypercorn: after 5 s); the next call must not fail."""
    import socket
    import threading

    from swarmd.ctl import Client

    path = str(tmp_path / "fake.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    answer = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"n": "ok"}'

    def serve() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                request = b""
                while not (b"\r\n\r\n" in request and request.endswith(b"}")):  # headers, then the body
                    request += conn.recv(65536)
                conn.sendall(answer)
            # closed after one answer although the client asked for keep-alive

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = Client(path, timeout=5)
    try:
        assert client.call("A") == {"n": "ok"}
        assert client.call("B") == {"n": "ok"}
    finally:
        client.close()
        server.close()
    thread.join(timeout=5)
