"""Setting parsing: strict from the file (YAML 1.2 types), SwarmUI-style from the API."""

import pytest

from swarmd.settings import SettingError, SettingSpec, parse_bool, parse_int
from swarmd.types import TYPES

PORT = SettingSpec("port", "integer", 0, minimum=0, maximum=65535)
FLAG = SettingSpec("flag", "boolean", False)
MODE = SettingSpec("mode", "dropdown", "a", values=("a", "b", "false"))
DELAY = SettingSpec("delay", "decimal", 0.1, minimum=0)
TEXT = SettingSpec("text", "text", "")


def test_file_integer_is_strict():
    assert PORT.from_file(8080) == 8080
    with pytest.raises(SettingError, match="expected an integer, got 'abc'"):
        PORT.from_file("abc")
    with pytest.raises(SettingError, match="expected an integer, got boolean true"):
        PORT.from_file(True)
    with pytest.raises(SettingError, match="must be at most 65535, got 70000"):
        PORT.from_file(70000)


def test_file_boolean_explains_yaml12():
    assert FLAG.from_file(True) is True
    with pytest.raises(SettingError, match=r"YAML 1.2 reads 'yes' as a string: write true or false"):
        FLAG.from_file("yes")


def test_file_dropdown_and_decimal_and_text():
    assert MODE.from_file("b") == "b"
    assert MODE.from_file(False) == "false"  # YAML's false for a dropdown whose value is "false"
    with pytest.raises(SettingError, match="expected one of 'a', 'b', 'false', got 'c'"):
        MODE.from_file("c")
    assert DELAY.from_file(1) == 1.0
    with pytest.raises(SettingError, match="must be at least 0"):
        DELAY.from_file(-1)
    assert TEXT.from_file(0) == "0"  # gpu_id: 0 is fine as text
    assert TEXT.from_file(None) == ""
    with pytest.raises(SettingError, match="expected text, got boolean false"):
        TEXT.from_file(False)


def test_api_coercion_like_swarmui():
    assert PORT.from_api("5") == 5
    assert PORT.from_api(5) == 5
    with pytest.raises(SettingError):
        PORT.from_api(5.0)  # int.TryParse("5.0") fails in C#
    assert FLAG.from_api("TRUE") is True
    assert FLAG.from_api("1") is False  # only "true" is true, as SwarmUI's EditBackend
    assert FLAG.from_api(True) is True
    assert TEXT.from_api(None) == ""
    assert DELAY.from_api("0.5") == 0.5


def test_csharp_parsers():
    assert parse_int(" -12 ") == -12
    assert parse_int("2147483648") is None
    assert parse_int("1e3") is None
    assert parse_bool(" False ") is False
    assert parse_bool("yes") is None


def test_process_type_checks_its_settings():
    process = TYPES["process"]
    with pytest.raises(SettingError, match="cannot split command line"):
        process.spec("command").from_file("python3 -c 'unterminated")
    with pytest.raises(SettingError, match="expected none, tcp"):
        process.spec("ready_check").from_file("ftp://x")
    with pytest.raises(SettingError, match="unknown signal"):
        process.spec("stop_signal").from_file("SIGNOPE")
    assert process.spec("stop_signal").from_file("int") == "SIGINT"
    assert process.spec("env").from_file({"A": 1, "B": "x"}) == "A=1\nB=x"
    with pytest.raises(SettingError, match="line 2: expected KEY=VALUE"):
        process.spec("env").from_file("A=1\nnot an assignment")


def test_process_launch_fills_port_and_refuses_empty_command():
    from swarmd.types import LaunchRefused

    process = TYPES["process"]
    settings = process.defaults()
    with pytest.raises(LaunchRefused, match="No command set"):
        process.launch(settings, 1234)
    settings.update(command="python3 -m http.server --bind 127.0.0.1 {port}", env="X={port}",
                    ready_check="http://127.0.0.1:{port}/")
    spec = process.launch(settings, 1234)
    assert spec.argv[-1] == "1234"
    assert spec.env == {"X": "1234", "PORT": "1234"}
    assert spec.ready_check == "http://127.0.0.1:1234/"


def test_nul_bytes_are_refused_in_every_text_setting():
    # found by the reliability suite: a NUL in `cwd` made Popen raise ValueError inside the daemon
    for name in ("command", "cwd", "env", "gpu_id"):
        with pytest.raises(SettingError, match="NUL"):
            TYPES["process"].spec(name).from_api("x\x00y")
