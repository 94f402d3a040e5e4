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
    assert PORT.from_api(5.0) == 5  # JToken.ToString() of 5.0 is "5", which int.TryParse takes
    with pytest.raises(SettingError):
        PORT.from_api(5.5)
    with pytest.raises(SettingError):
        PORT.from_api("5.0")  # the text itself: int.TryParse("5.0") fails in C#
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


# -- one validation everywhere: URLs, text, mappings --------------------------------------------------------

URL_PROBLEMS = [
    ("http://[::1", "Invalid IPv6 URL"),
    ("http://[::1]x:80/", "after the IPv6 address"),
    ("http://[v1.x]/", "is not an IPv6 address"),
    ("http://::1/", "must be written in brackets"),
    ("http://127.0.0.1:99999/", "(port 99999 out of range)"),
    ("http://127.0.0.1:65536/", "(port 65536 out of range)"),
    ("http://127.0.0.1:0/", "(port 0 out of range)"),
    ("http://h:" + "9" * 5000 + "/", "out of range"),
    ("http://h:x/", "port 'x' is not a number"),
    ("http:///path", "no host"),
    ("http://:8080/", "no host"),
    ("https://127.0.0.1/", "https is not supported"),
    ("http://user:pw@127.0.0.1/", "user:password@ is not supported"),
    ("http://user@127.0.0.1/", "user:password@ is not supported"),
    ("http://127.0.0.1/#top", "#fragment"),
    ("http://127.0.0.1/a b", "a space at character"),
    ("http://h\u00e9/", "non-ASCII"),
    ("http://bad_label-.example/", "is not a valid host name"),
]


@pytest.mark.parametrize("type_id, name", [("process", "ready_check"), ("process", "free_memory"),
                                           ("comfyui_api", "Address")])
@pytest.mark.parametrize("url, reason", URL_PROBLEMS)
def test_every_url_setting_refuses_what_the_client_cannot_use(type_id, name, url, reason):
    spec = TYPES[type_id].spec(name)
    for parse in (spec.from_file, spec.from_api):
        with pytest.raises(SettingError) as info:
            parse(url)
        message = str(info.value)
        assert message.startswith("expected an http:// URL with a host and a port 1-65535, got "), message
        assert reason in message and len(message) < 250


def test_the_url_message_names_the_problem():
    with pytest.raises(SettingError) as info:
        TYPES["process"].spec("ready_check").from_file("http://127.0.0.1:99999/")
    assert str(info.value) == ("expected an http:// URL with a host and a port 1-65535, got "
                               "'http://127.0.0.1:99999/' (port 99999 out of range)")


def test_good_urls_ipv6_and_placeholders():
    from swarmd.httpclient import parse_url

    process, remote = TYPES["process"], TYPES["comfyui_api"]
    assert remote.spec("Address").from_file("http://[::1]:8188/") == "http://[::1]:8188"
    assert remote.spec("Address").from_file(" http://comfy.lan ") == "http://comfy.lan"
    assert remote.spec("Address").from_api("HTTP://127.0.0.1:8188/") == "http://127.0.0.1:8188"
    assert remote.health_url({"Address": "http://[::1]:8188"}) == "http://[::1]:8188/system_stats"
    target = parse_url("http://[::1]:8188/system_stats")
    assert (target.host, target.port, target.path, target.host_header) == ("::1", 8188, "/system_stats",
                                                                          "[::1]:8188")
    assert parse_url("http://h/?a=1").path == "/?a=1" and parse_url("http://h").port == 80
    ready = process.spec("ready_check")
    assert ready.from_file("http://[::1]:{port}/health?x=1") == "http://[::1]:{port}/health?x=1"
    assert ready.from_file("http://127.0.0.1:{port}/") == "http://127.0.0.1:{port}/"
    free = "http://localhost:{port}/free"
    assert process.spec("free_memory").from_api(free) == free
    with pytest.raises(SettingError, match=r"port 655350 out of range"):
        ready.from_file("http://127.0.0.1:{port}0/")  # valid with no port a start can fill in
    with pytest.raises(SettingError, match=r"port '\{port\}' is not a number"):
        remote.spec("Address").from_file("http://127.0.0.1:{port}")  # no placeholder in an address
    with pytest.raises(SettingError, match=r"without a \?query"):
        remote.spec("Address").from_file("http://127.0.0.1:8188/?a=b")
    with pytest.raises(SettingError, match=r"expected none, tcp"):
        ready.from_file("ftp://x")


def test_log_regexes_refuse_without_raising_anything_else():
    ready = TYPES["process"].spec("ready_check")
    for pattern, what in [("(", "missing \\)"), ("(" * 3000 + ")" * 3000, "RecursionError"),
                          ("a{99999999999}", ""), ("a{{port}{port}0000}", "")]:
        expected = "invalid regular expression after 'log:'" + (f": {what}" if what else "")
        with pytest.raises(SettingError, match=expected):
            ready.from_file("log:" + pattern)
    assert ready.from_file("log:^listening on {port}$") == "log:^listening on {port}$"


TEXT_SPECS = [(t.id, s.name) for t in TYPES.values() for s in t.settings if s.kind == "text"]


@pytest.mark.parametrize("type_id, name", TEXT_SPECS)
def test_lone_surrogates_are_refused_in_every_text_setting(type_id, name):
    spec = TYPES[type_id].spec(name)
    for parse in (spec.from_file, spec.from_api):
        for value in ("\ud800", "0\udfff", "http://127.0.0.1:8188/\udc80", "A=\ud83d"):
            with pytest.raises(SettingError, match="lone surrogate"):
                parse(value)
    if spec.mapping_ok:
        for parse in (spec.from_file, spec.from_api):
            with pytest.raises(SettingError, match="lone surrogate"):
                parse({"A": "x\ud800"})
            with pytest.raises(SettingError, match="environment variable names"):
                parse({"A\ud800": "x"})


def test_lone_surrogates_are_refused_from_the_api_whatever_the_kind():
    spec_of = TYPES["process"].spec
    for name, value in [("restart", "always\ud800"), ("port", "80\ud800"), ("restart_delay", "1\ud800"),
                        ("rocr_visible_devices", "true\ud800"), ("rocr_visible_devices", "\ud800")]:
        with pytest.raises(SettingError, match="lone surrogate"):
            spec_of(name).from_api(value)
    with pytest.raises(SettingError) as info:
        spec_of("restart").from_file("always\ud800")
    str(info.value).encode("utf-8")  # the message itself can be logged and sent


def test_env_mapping_values_must_be_scalars():
    env = TYPES["process"].spec("env")
    assert env.from_file({"A": 1, "B": "x", "C": True, "D": None, "E": 1.5}) == "A=1\nB=x\nC=true\nD=\nE=1.5"
    for parse in (env.from_file, env.from_api):
        with pytest.raises(SettingError, match=r"^env\.A: expected a scalar value, got a list$"):
            parse({"A": [1, 2]})
        with pytest.raises(SettingError, match=r"^env\.B: expected a scalar value, got a mapping$"):
            parse({"B": {"x": 1}})
        with pytest.raises(SettingError, match=r"env\.C: a value must be one line"):
            parse({"C": "x\nD=injected"})
        for key in ("1A", "A-B", "A=B", "", "A B"):
            with pytest.raises(SettingError, match="environment variable names"):
                parse({key: "x"})
    with pytest.raises(SettingError, match="environment variable names"):
        env.from_file({("a", "tuple"): "x"})
    with pytest.raises(SettingError, match="line 1: expected KEY=VALUE"):
        env.from_file("\u00c4=x")  # names are ASCII in the text form too


ALIAS_BOMB = "\n".join(
    ["a0: &a0 [" + ", ".join(["x"] * 10) + "]"]
    + [f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]" for level in range(1, 9)]
    + ["env: {BOMB: *a8, SAFE: 1}"]) + "\n"


def test_an_alias_bomb_in_env_is_refused_fast_with_a_bounded_message():
    import resource
    import time

    from ruamel.yaml import YAML

    loader = YAML(typ="safe", pure=False)
    assert loader.Parser.__name__ == "CParser"  # the C loader, as the daemon's fast path reads the file
    document = loader.load(ALIAS_BOMB)  # 10**9 leaves if expanded: str() of it would never end
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(SettingError) as info:
        TYPES["process"].spec("env").from_file(document["env"])
    assert time.monotonic() - started < 0.5
    assert str(info.value) == "env.BOMB: expected a scalar value, got a list"
    for name in ("command", "cwd", "gpu_id", "ready_check", "free_memory", "stop_signal"):
        with pytest.raises(SettingError) as info:
            TYPES["process"].spec(name).from_file(document["a8"])
        assert len(str(info.value)) < 200
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 50 * 1024


def test_nothing_but_setting_errors_for_out_of_range_numbers():
    spec_of = TYPES["process"].spec
    with pytest.raises(SettingError, match="expected an integer from -2147483648 to 2147483647, got "
                                           "a number of about 5001 digits"):
        spec_of("max_usages").from_file(10**5000)
    with pytest.raises(SettingError, match="expected a finite number"):
        spec_of("restart_delay").from_file(10**400)
    with pytest.raises(SettingError, match="at most 38 digits"):
        spec_of("cwd").from_file(10**5000)
    with pytest.raises(SettingError, match="expected an integer"):
        spec_of("port").from_api("9" * 5000)
    with pytest.raises(SettingError, match="expected an integer"):
        spec_of("port").from_api("\u0661")  # isdigit(), but C#'s int.TryParse takes ASCII digits only
    with pytest.raises(SettingError, match="no signal number 999999999999..."):
        spec_of("stop_signal").from_file("9" * 6000)


# -- SwarmUI's ComfyUI settings (issue #12) ----------------------------------------------------------------


@pytest.mark.parametrize("type_id, given, message", [
    ("comfyui_selfstart", "StartScrpt",
     "unknown setting 'StartScrpt' for type 'comfyui_selfstart' (did you mean 'StartScript'?)"),
    ("comfyui_selfstart", "start_script",
     "unknown setting 'start_script' for type 'comfyui_selfstart' (did you mean 'StartScript'?)"),
    ("comfyui_selfstart", "startscript",
     "unknown setting 'startscript' for type 'comfyui_selfstart' (did you mean 'StartScript'?)"),
    ("comfyui_selfstart", "gpu_id",
     "unknown setting 'gpu_id' for type 'comfyui_selfstart' (did you mean 'GPU_ID'?)"),
    ("comfyui_selfstart", "EnablePreview",
     "unknown setting 'EnablePreview' for type 'comfyui_selfstart' (did you mean 'EnablePreviews'?)"),
    ("comfyui_selfstart", "Python",
     "unknown setting 'Python' for type 'comfyui_selfstart' (did you mean 'python'?)"),
    ("comfyui_api", "address", "unknown setting 'address' for type 'comfyui_api' (did you mean 'Address'?)"),
    ("comfyui_api", "checkinterval",
     "unknown setting 'checkinterval' for type 'comfyui_api' (did you mean 'check_interval'?)"),
    ("process", "GPU_ID", "unknown setting 'GPU_ID' for type 'process' (did you mean 'gpu_id'?)"),
    ("process", "comand", "unknown setting 'comand' for type 'process' (did you mean 'command'?)"),
    ("comfyui_api", "colour", "unknown setting 'colour' for type 'comfyui_api' "
                              "(known: Address, AllowIdle, OverQueue, EnableFrontendDev, health_interval, "
                              "health_timeout, health_failures, check_interval)"),
])
def test_unknown_setting_message_names_the_nearest_known_name(type_id, given, message):
    assert TYPES[type_id].unknown_setting_message(given) == message


def test_unknown_setting_message_is_bounded_and_never_raises():
    selfstart = TYPES["comfyui_selfstart"]
    huge = selfstart.unknown_setting_message("StartScript" + "x" * 1_000_000)
    assert len(huge) < 600 and huge.startswith("unknown setting 'StartScriptxxx")
    assert "(known: StartScript, " in huge  # no suggestion for a name that long
    for odd in ("", " ", "\x00", "\ud800", "a\nb", 5, None):
        text = selfstart.unknown_setting_message(odd)
        assert text.startswith("unknown setting ") and len(text) < 600
    assert selfstart.nearest_setting("GPU-ID") == "GPU_ID" and selfstart.nearest_setting("zzzz") is None


def comfy_settings(**changes):
    settings = TYPES["comfyui_selfstart"].defaults()
    settings.update(changes)
    return settings


@pytest.mark.parametrize("changes, expected", [
    ({}, ["--listen", "127.0.0.1", "--preview-method", "auto", "--port", "8188"]),
    ({"EnablePreviews": "false"}, ["--listen", "127.0.0.1", "--preview-method", "none", "--port", "8188"]),
    ({"EnablePreviews": "taesd", "ExtraArgs": "--lowvram"},
     ["--lowvram", "--listen", "127.0.0.1", "--preview-method", "taesd", "--port", "8188"]),
    ({"ExtraArgs": "--preview-method latent2rgb"},
     ["--preview-method", "latent2rgb", "--listen", "127.0.0.1", "--port", "8188"]),
    ({"ExtraArgs": "--preview-method=taesd --x 'a b'"},
     ["--preview-method=taesd", "--x", "a b", "--listen", "127.0.0.1", "--port", "8188"]),
    ({"DisableInternalArgs": True}, ["--port", "8188"]),
    ({"DisableInternalArgs": True, "EnablePreviews": "taesd", "ExtraArgs": "--listen 0.0.0.0"},
     ["--listen", "0.0.0.0", "--port", "8188"]),
    ({"ExtraArgs": "--port 1"}, ["--port", "1", "--listen", "127.0.0.1", "--preview-method", "auto", "--port",
                                 "8188"]),  # swarmd's comes last: ComfyUI's parser keeps the last one
])
def test_comfyui_arguments_from_swarmui_settings(changes, expected, tmp_path):
    script = tmp_path / "main.py"
    script.write_text("")
    selfstart = TYPES["comfyui_selfstart"]
    spec = selfstart.launch(comfy_settings(StartScript=str(script), python="python3", **changes), 8188)
    assert spec.argv == ("python3", "-s", "main.py", *expected)
    assert spec.cwd == str(tmp_path) and spec.ready_check == "http://127.0.0.1:8188/system_stats"


def test_comfyui_settings_that_cannot_apply_are_accepted_and_change_nothing(tmp_path):
    script = tmp_path / "main.py"
    script.write_text("")
    selfstart = TYPES["comfyui_selfstart"]
    base = comfy_settings(StartScript=str(script))
    for name, values in [("AutoUpdate", ("true", "aggressive", "false")),
                         ("UpdateManagedNodes", ("true", "aggressive", "false")),
                         ("FrontendVersion", ("Latest", "None", "LatestSwarmValidated", "Legacy"))]:
        spec = selfstart.spec(name)
        assert "No effect under swarmd" in spec.description
        for value in values:
            assert spec.from_api(value) == value
            assert selfstart.launch({**base, name: value}, 1) == selfstart.launch(base, 1)
        with pytest.raises(SettingError, match="expected one of"):
            spec.from_api("sometimes")
    assert selfstart.spec("AutoUpdate").from_file(True) == "true"  # YAML's true, as in SwarmUI's files
    assert selfstart.spec("EnablePreviews").from_api(False) == "false"  # older clients: a checkbox
    assert selfstart.spec("EnablePreviews").from_file(True) == "true"
    assert "No effect under swarmd" in TYPES["comfyui_api"].spec("EnableFrontendDev").description


def test_comfyui_lifecycle_and_usages_read_swarmui_names():
    selfstart, remote = TYPES["comfyui_selfstart"], TYPES["comfyui_api"]
    assert selfstart.lifecycle_config(comfy_settings()).restart == "on-failure"
    assert selfstart.lifecycle_config(comfy_settings(AutoRestart=False)).restart == "never"
    assert selfstart.lifecycle_config(comfy_settings(restart="always")).restart == "always"
    assert selfstart.max_usages(comfy_settings(OverQueue=2)) == 3
    api = remote.defaults()
    assert remote.max_usages(api) == 2 and remote.lifecycle_config(api).allow_idle is False
    assert remote.lifecycle_config({**api, "AllowIdle": True}).allow_idle is True
    assert remote.health_url(api) == remote.free_url(api) == ""
    assert remote.free_url({**api, "Address": "http://h:1"}) == "http://h:1/free"
    assert TYPES["process"].max_usages(TYPES["process"].defaults()) == 1
    assert (selfstart.gpu_setting, selfstart.rocr_setting) == ("GPU_ID", "rocr_visible_devices")
    assert (TYPES["process"].gpu_setting, TYPES["process"].rocr_setting) == ("gpu_id", "rocr_visible_devices")
    assert (remote.gpu_setting, remote.rocr_setting) == ("", "")
    assert selfstart.defaults()["GPU_ID"] == "0"  # SwarmUI's default


def test_start_script_must_name_main_py():
    spec = TYPES["comfyui_selfstart"].spec("StartScript")
    assert spec.from_api(" /srv/ComfyUI/main.py ") == "/srv/ComfyUI/main.py"
    assert spec.from_file("") == ""
    with pytest.raises(SettingError, match="expected the path of ComfyUI's main.py"):
        spec.from_api("/srv/ComfyUI/")
