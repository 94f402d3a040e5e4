"""One validation, everywhere: what a setting's validation accepts can be started (hypothesis).

For EVERY setting of EVERY backend type, arbitrary values from the API side (JSON scalars and hostile
text: lone surrogates, NUL, line breaks, quotes, `#`, `: `, odd spaces, numbers as text, URL-ish strings
with odd hosts, ports and brackets) and from the file side (YAML scalars and small lists/mappings):

* validation raises `SettingError` -- with a bounded message that can be encoded as UTF-8 -- or
* it accepts a value with which
  (a) `launch(settings, port)` raises nothing but `LaunchRefused`/`LaunchFailed`, and what the supervisor
      then does with the LaunchSpec cannot raise either (the readiness check, the free-memory hook, the
      stop signal, the GPU pin);
  (b) every URL the type will use (ready_check, free_memory, health_url, free_url) passes the HTTP
      client's URL parsing;
  (c) every text value encodes as UTF-8, and the settings can be sent as JSON.
"""

from __future__ import annotations

import json
import re
import signal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmd import gpu
from swarmd.gpu import GPU, PinError, StaticInventory
from swarmd.httpclient import BadUrl, HttpError, parse_url, request
from swarmd.settings import SettingError, SettingSpec
from swarmd.types import TYPES, BackendType, LaunchFailed, LaunchRefused, LaunchSpec

A = "GPU-76a8c3e1-0000-4000-8000-000000000000"
B = "GPU-76a9d4f2-1111-4000-8000-111111111111"

ALL_SETTINGS = [(t.id, s.name) for t in TYPES.values() for s in t.settings]

# -- values ---------------------------------------------------------------------------------------------

FRAGMENTS = ["", " ", "  ", "\t", "\n", "\r\n", "\u2028", "\x85", "\x00", "\x0b", "\x1f", "\xa0", "\ud800",
             "\udfff", "\udc80", "'", '"', "#", ": ", "- ", "{", "}", "{port}", "[", "]", "=", "\\", "%",
             "%25", "@", "?", "/", ":",
             ",", "0", "1", "65535", "65536", "99999", "-1", "1e3", "0x10", "nan", "inf", "true", "True",
             "yes", "null", "~", "auto", "none", "tcp", "log:", "signal:", "SIG", "TERM", "USR1", "9", "64",
             "GPU-", "MIG-", "GPU-76a", "main.py", "/tmp/main.py", "~", "~root/", "$HOME", "é", "\u0661",
             "\u00b2", "\uff10", "\U0001f600", "(", ")", "(?P<x>", "*", "+", "a{99999999999}", "((((((((",
             "http://", "HTTP://", "https://", "127.0.0.1", "[::1]", "[::1", "::1]", "localhost", "A=1", "A=",
             "=1", "x" * 300]
hosts = st.sampled_from(["127.0.0.1", "localhost", "[::1]", "[::1", "::1", "[::1]x", "", "h_", "-h", "[v1.x]",
                         "a..b", "é", "user@h", "u:p@h", "{port}", "[{port}]", "[fe80::1%25eth0]",
                         "1.2.3.4.",
                         "x" * 70, "[::ffff:1.2.3.4]", "h]", "]h[", "%41"]) | st.text(max_size=6)
ports = (st.sampled_from(["", ":", ":0", ":1", ":80", ":65535", ":65536", ":99999", ":{port}", ":{port}0",
                          ":0{port}", ":-1", ":x", ":" + "9" * 30, ":\uff18\uff10", ": 80", ":80 "])
         | st.integers(-5, 10**6).map(lambda p: f":{p}"))
paths = (st.sampled_from(["", "/", "/x", "/a b", "/#frag", "?q=1", "/?q={port}", "/%zz", "/\n", "/\ud800",
                          "/é", "//", "/system_stats"])
         | st.text(max_size=6).map(lambda t: "/" + t))
schemes = st.sampled_from(["http://", "HTTP://", "Http://", "https://", "http:/", "http:", "ftp://", "",
                           " http://", "http:// "])
urls = st.builds(lambda s, h, p, q: s + h + p + q, schemes, hosts, ports, paths)
prefixes = st.sampled_from(["", "log:", "signal:", "signal:SIG", "GPU-", "MIG-", "SIG", "http://127.0.0.1:"])
any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=30)
texts = st.one_of(
    any_text,
    st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join),
    st.builds(lambda p, t: p + t, prefixes, st.lists(st.sampled_from(FRAGMENTS) | any_text, max_size=4)
              .map("".join)),
    urls,
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(repr),
    st.builds(lambda a, t, b: a + t + b, st.sampled_from(["", " ", "\t"]), any_text,
              st.sampled_from(["", " ", "\n"])),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), texts)
#: From the API: JSON values as SwarmUI sends them, mostly scalars and text, sometimes a small object.
api_values = scalars | st.dictionaries(texts, scalars, max_size=3) | st.lists(scalars, max_size=3)
#: From the file: what a YAML 1.2 load gives (including ints beyond any range), mostly scalars.
file_scalars = scalars | st.integers().map(lambda i: i * 10**40) | st.just(10**300)
file_values = st.recursive(file_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.one_of(texts, st.integers(), st.none()), inner, max_size=3),
                           max_leaves=5)

# -- what "can be started" means -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def start_script(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A harmless ComfyUI main.py, so that launch() of comfyui_selfstart gets past "no such file"."""
    path = tmp_path_factory.mktemp("comfy") / "main.py"
    path.write_text("")
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def machine():
    """Two GPUs at the module boundary, so that GPU pins (gpu_id, GPU_ID) are validated against a machine."""
    gpu.set_inventory(StaticInventory(gpu_list=[GPU(0, A, "H200", memory_free=10), GPU(1, B, "H200")]))
    yield
    gpu.set_inventory(None)


def utf8(value: Any) -> None:
    """(c): every text in `value` encodes as UTF-8 (raises UnicodeEncodeError otherwise)."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for key, item in value.items():
            utf8(key)
            utf8(item)
    elif isinstance(value, list | tuple):
        for item in value:
            utf8(item)


def check_url(url: str) -> None:
    """(b): the HTTP client can use it (parse_url raises BadUrl otherwise)."""
    target = parse_url(url)
    assert 1 <= target.port <= 65535 and target.host and target.path.startswith(("/", "?"))
    utf8([target.host, target.path, target.host_header])


def check_startable(backend_type: BackendType, name: str, value: Any, script: str, port: int) -> None:
    """Everything a start does with settings holding `value`, short of spawning."""
    settings_ = backend_type.defaults()
    if "command" in settings_:
        settings_["command"] = "true"
    if "StartScript" in settings_:
        settings_["StartScript"] = script
    settings_[name] = value
    utf8(settings_)
    json.dumps(settings_, allow_nan=False)  # ListBackends can show them
    backend_type.max_usages(settings_)
    backend_type.requested_port(settings_)
    backend_type.lifecycle_config(settings_)
    if not backend_type.self_starting:
        for url in (backend_type.health_url(settings_), backend_type.free_url(settings_)):
            if url:
                check_url(url)
        return
    try:
        spec = backend_type.launch(settings_, port)
    except (LaunchRefused, LaunchFailed) as err:
        str(err).encode("utf-8")
        # A process names nothing that must exist: its LaunchFailed (a URL or a log regex that no longer
        # parses once the port is filled in) would be a value validation should have refused.
        assert not (isinstance(err, LaunchFailed) and backend_type.id == "process"), str(err)
        return
    assert isinstance(spec, LaunchSpec)
    utf8([spec.argv, spec.env, spec.cwd or "", spec.ready_check, spec.free_memory, spec.unset_env])
    for text in (*spec.argv, *spec.env, *spec.env.values(), spec.cwd or ""):
        assert "\x00" not in text  # exec would refuse it
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) for key in spec.env)
    # the readiness check, as probes.wait_ready and the supervisor read it
    check = spec.ready_check
    if check.startswith("http://"):
        check_url(check)
    elif check.startswith("log:"):
        re.compile(check[4:])
    else:
        assert check in ("", "none", "tcp"), check
    # the free-memory hook, as the supervisor reads it
    hook = spec.free_memory
    if hook.startswith("http://"):
        check_url(hook)
    elif hook.startswith("signal:"):
        signal.Signals[hook[7:]]
    else:
        assert hook == "", hook
    assert isinstance(backend_type.lifecycle_config(settings_).stop_signal, signal.Signals)
    pin_name = backend_type.gpu_setting
    if pin_name:
        try:
            gpu.place(settings_[pin_name], {}).env(bool(settings_.get(backend_type.rocr_setting)))
        except PinError:
            assert str(settings_[pin_name]).strip() == "auto"  # only auto may find no GPU at start


def exercise(backend_type: BackendType, spec: SettingSpec, source: str, raw: Any, script: str,
             port: int) -> None:
    try:
        value = spec.from_api(raw) if source == "api" else spec.from_file(raw)
    except SettingError as err:
        message = str(err)
        message.encode("utf-8")
        assert len(message) < 600, message[:200]
        return
    check_startable(backend_type, spec.name, value, script, port)


#: ~200 examples for every text setting (they take hostile text), fewer for the closed kinds.
EXAMPLES = {"text": 200, "integer": 60, "decimal": 60, "boolean": 30, "dropdown": 60}
ports_used = st.sampled_from([1, 80, 8188, 65535]) | st.integers(1, 65535)


@pytest.mark.parametrize("type_id, name", ALL_SETTINGS)
def test_what_validation_accepts_can_be_started(type_id: str, name: str, start_script: str) -> None:
    backend_type = TYPES[type_id]
    spec = backend_type.spec(name)
    assert spec is not None

    @settings(max_examples=EXAMPLES[spec.kind], deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(data=st.one_of(st.tuples(st.just("api"), api_values), st.tuples(st.just("file"), file_values)),
           port=ports_used)
    def run(data: tuple[str, Any], port: int) -> None:
        exercise(backend_type, spec, data[0], data[1], start_script, port)

    run()


def test_the_defaults_can_be_started(start_script: str) -> None:
    for backend_type in TYPES.values():
        for spec in backend_type.settings:
            assert spec.from_file(spec.default) == spec.default or spec.name == "ready_check"
            check_startable(backend_type, spec.name, spec.default, start_script, 8188)


# -- the client side: no URL string makes the HTTP client raise anything but HttpError -------------------


@settings(max_examples=300, deadline=None, database=None)
@given(url=urls | texts)
def test_parse_url_raises_only_bad_url(url: str) -> None:
    try:
        target = parse_url(url)
    except BadUrl as err:
        assert isinstance(err, HttpError) and isinstance(err, ValueError)
        str(err).encode("utf-8")
        return
    assert 1 <= target.port <= 65535 and target.host


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:99999/", "http://127.0.0.1:0/", "http://",
                                 "http://:80/", "http://[::1]x:80/", "https://127.0.0.1/", "http://h/\ud800",
                                 "http://h:" + "9" * 5000, "", "\x00", "http://u@h/"])
async def test_request_refuses_bad_urls_with_http_error(url: str) -> None:
    with pytest.raises(HttpError) as info:
        await request("GET", url, timeout=1.0)
    assert len(str(info.value)) < 300


async def test_request_to_an_ipv6_host_sends_the_bracketed_host(nursery) -> None:
    import trio

    seen: list[bytes] = []
    listeners = await trio.open_tcp_listeners(0, host="::1")
    port = listeners[0].socket.getsockname()[1]

    async def answer(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(4096)
        seen.append(data)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await stream.aclose()

    nursery.start_soon(trio.serve_listeners, answer, listeners)
    response = await request("GET", f"http://[::1]:{port}/system_stats?x=1")
    assert (response.status, response.body) == (200, b"ok")
    assert seen[0].startswith(b"GET /system_stats?x=1 HTTP/1.1\r\n")
    assert f"\r\nHost: [::1]:{port}\r\n".encode() in seen[0]


async def test_a_status_line_of_many_digits_is_an_http_error(nursery) -> None:
    import trio

    async def answer(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 " + b"9" * 5000 + b" OK\r\n\r\n")
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, answer, listeners)
    with pytest.raises(HttpError, match="not an HTTP answer"):
        await request("GET", f"http://127.0.0.1:{port}/")


async def test_wait_ready_refuses_instead_of_asserting() -> None:
    from swarmd.supervise.probes import wait_ready

    for check in ("log:^up$", "ftp://x"):  # log: is the shell's to match, never a probe's
        with pytest.raises(ValueError, match="unknown ready_check"):
            await wait_ready(check, 0)


@settings(max_examples=300, deadline=None, database=None)
@given(raw=api_values | file_values)
def test_titles_and_api_text_never_raise_anything_else(raw: Any) -> None:
    from swarmd.settings import api_text, check_title, describe

    api_text(raw).encode("utf-8", "surrogatepass")  # never raises (a lone surrogate is the caller's to refuse)
    assert len(describe(raw)) < 120
    try:
        title = check_title(raw)
    except SettingError as err:
        str(err).encode("utf-8")
        return
    title.encode("utf-8")
