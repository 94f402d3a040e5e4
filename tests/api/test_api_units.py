"""Pure parts of the API: parameter coercion, roles and flags, the access config, /proc readers."""

from __future__ import annotations

import os

import pytest

from swarmd.api import access
from swarmd.api.access import AccessConfig, AccessRule, load_access_config, parse_mode
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


@pytest.mark.parametrize(("raw", "text"), [(5.0, "5.0"), ("5.5", "5.5"), (2**31, str(2**31)), (True, "True"),
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


def test_root_and_own_uid_are_owner_without_rules() -> None:
    assert access.role_for(0, 0) == "owner"
    assert access.role_for(os.getuid(), os.getgid()) == "owner"
    assert access.role_for(65534, 65534) is None


def test_rules_match_uid_user_and_groups_first_wins() -> None:
    config = AccessConfig(rules=[
        AccessRule(uid=4242, role="admin"),
        AccessRule(user="nobody", role="poweruser"),
        AccessRule(group="4343", role="user"),
        AccessRule(uid=4242, role="guest"),
    ])
    assert config.role_for(4242, 1) == "admin"
    assert config.role_for(65534, 65534) == "poweruser"  # "nobody" on Debian
    assert config.role_for(5000, 5000, groups=[4343]) == "user"  # a supplementary group
    assert config.role_for(5000, 4343, groups=[]) == "user"  # the primary group
    assert config.role_for(5000, 5000, groups=[]) is None


def test_load_access_config() -> None:
    config = load_access_config({
        "socket": {"path": "/run/x.sock", "mode": "0666", "group": "swarm"},
        "access": [{"user": "alice", "role": "admin"}, {"group": "swarm", "role": "poweruser"},
                   {"uid": 1001, "role": "user"}],
        "log_level": "info",  # someone else's key
    })
    assert config.socket_path == "/run/x.sock" and config.socket_mode == 0o666 and config.socket_group == "swarm"
    assert config.rules == [AccessRule(user="alice", role="admin"), AccessRule(group="swarm", role="poweruser"),
                            AccessRule(uid=1001, role="user")]
    assert load_access_config({}) == AccessConfig()
    assert load_access_config(None) == AccessConfig()


@pytest.mark.parametrize(("data", "message"), [
    ({"access": {"user": "a"}}, "access: expected a list"),
    ({"access": [{"user": "a"}]}, "access[0].role: expected one of"),
    ({"access": [{"user": "a", "role": "root"}]}, "access[0].role: expected one of"),
    ({"access": [{"user": "a", "uid": 3, "role": "user"}]}, "access[0]: give exactly one of"),
    ({"access": [{"role": "user"}]}, "access[0]: give exactly one of"),
    ({"access": [{"uid": "x", "role": "user"}]}, "access[0].uid: expected a non-negative integer"),
    ({"access": [{"usr": "a", "role": "user"}]}, "access[0].usr: unknown key"),
    ({"socket": {"mode": 660}}, "socket.mode: write the mode as a quoted octal string"),
    ({"socket": {"mode": "0999"}}, "socket.mode: expected an octal mode"),
    ({"socket": {"mode": "07777"}}, "socket.mode: expected permission bits only"),
    ({"socket": {"colour": "red"}}, "socket.colour: unknown key"),
    ({"socket": "/run/x.sock"}, "socket: expected a mapping"),
    (["not", "a", "mapping"], "config: expected a mapping"),
])
def test_load_access_config_errors(data: object, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        load_access_config(data)  # type: ignore[arg-type]


def test_parse_mode() -> None:
    assert parse_mode("0660") == parse_mode("660") == parse_mode("0o660") == 0o660


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
