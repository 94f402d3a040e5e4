"""Secrets stay with admins: ListBackends masks `env` values and credentials in text settings for callers
without the admin role (a poweruser: uid 65534 through `setpriv`, by the daemon config's `access:` rules),
admins see them, and an edit that sends a masked value back unchanged keeps the stored value.

The masking itself (`api.shape.mask_text`/`unmask_text`) and the views of the route handlers are tested in
process too, so that they run without root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmd.api.routes import ApiContext, Caller, edit_backend, list_backends
from swarmd.api.shape import backend_object
from swarmd.fleet import FleetError
from swarmd.secrets import mask_text, unmask_text
from swarmd.settings import SECRET_MASK
from tests.helpers import NOBODY_POWERUSER_CONFIG, Daemon, backend_yaml, daemon_with_config, nobody_ctl_argv

SETPRIV = shutil.which("setpriv")
M = SECRET_MASK

#: Every secret below holds this marker: a view that shows none of it shows no secret.
MARK = "SeCrEt"
COMMAND = (f'python3 -c "import time; time.sleep(600)" --hf-token hf_{MARK}1 --url=http://bob:pw_{MARK}2@127.0.0.1/x '
           f"--port 5 DB_PASSWORD=pw_{MARK}3")
COMMAND_MASKED = (f'python3 -c "import time; time.sleep(600)" --hf-token {M} --url=http://bob:{M}@127.0.0.1/x '
                  f"--port 5 DB_PASSWORD={M}")
ENV = f"HF_TOKEN=hf_{MARK}4\nPLAIN=plain_{MARK}5\n# a comment\nEMPTY="
ENV_MASKED = f"HF_TOKEN={M}\nPLAIN={M}\n# a comment\nEMPTY="
SLEEPER = 'python3 -c "import time; time.sleep(600)"'
BACKENDS = {
    0: {"title": "secrets", "settings": {"command": COMMAND, "env": ENV}},
    1: {"title": "none", "settings": {"command": SLEEPER, "env": "A=1"}},
    2: {"title": "edited", "settings": {"command": COMMAND, "env": ENV}},
}


# -- masking -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "env", "shown"), [
    (ENV, True, ENV_MASKED),
    (COMMAND, False, COMMAND_MASKED),
    ("OPENAI_API_KEY=sk-1 two words", False, f"OPENAI_API_KEY={M}"),
    ("  export aws_secret_access_key = abc", False, f"  export aws_secret_access_key ={M}"),
    ("--api-key='a b' --token \"c d\" --use-token --port 1", False, f"--api-key={M} --token {M} --use-token --port 1"),
    ("git+https://user:p@ss@example.com/r.git", False, f"git+https://user:{M}@example.com/r.git"),
    ("http://127.0.0.1:{port}/ keyboard=us", False, "http://127.0.0.1:{port}/ keyboard=us"),
    ("A=1\u2028HF_TOKEN=x", True, f"A={M}"),  # one line for the mask: nothing hides behind another break
    ("A=1\u2028HF_TOKEN=x", False, f"A=1\u2028HF_TOKEN={M}"),
    ("", True, ""),
])
def test_mask_text(text, env, shown):
    assert mask_text(text, env) == shown
    assert unmask_text(shown, text, env) == text  # sent back unchanged: the stored value


def test_unmask_text_line_by_line():
    stored = "A=1\n HF_TOKEN = hf_x\nB=2"
    # each masked line stands for its stored line; env's KEY=<mask> for KEY's stored line
    assert unmask_text(f"HF_TOKEN={M}\nA=9", stored, env=True) == " HF_TOKEN = hf_x\nA=9"
    assert unmask_text(f"B={M}\nC=3", stored, env=True) == "B=2\nC=3"
    assert unmask_text(M, stored, env=True) == stored
    assert unmask_text(f"NEW_TOKEN={M}", stored, env=True) is None  # stands for nothing stored
    assert unmask_text(f"A={M}", None, env=True) is None
    assert unmask_text("no mask", None) == "no mask"
    assert unmask_text(f"run --token {M} --port 2", "run --token abc --port 1") is None  # an edited line


PIECES = [*"aAkK=:/@ \t\n\"'-_#", "token", "KEY", "secret", "Password", "http://", "u:p@h", "export ", "\u2028", M]


@given(st.lists(st.sampled_from(PIECES), max_size=30).map("".join), st.booleans())
def test_what_is_shown_always_comes_back_as_it_was(text, env):
    assert unmask_text(mask_text(text, env), text, env) == text


# -- the views of the route handlers, in process -------------------------------------------------------------


def caller(role: str) -> Caller:
    return Caller(peer=None, role=role)


async def listing(ctx: ApiContext, role: str, full_data: bool = False) -> dict:
    return json.loads((await list_backends(ctx, caller(role), {}, nonreal=False, full_data=full_data)).text)


async def test_list_backends_masks_for_everyone_but_admins(make_fleet):
    fleet = await make_fleet(BACKENDS)
    ctx = ApiContext(fleet)
    for role in ("poweruser", "user", "guest"):
        for full_data in (False, True):
            shown = await listing(ctx, role, full_data)
            assert MARK not in json.dumps(shown), (role, full_data)
            assert shown["0"]["settings"]["env"] == ENV_MASKED
            assert shown["0"]["settings"]["command"] == COMMAND_MASKED
            assert shown["1"]["settings"]["env"] == f"A={M}"
    for role in ("admin", "owner"):
        shown = await listing(ctx, role, True)
        assert (shown["0"]["settings"]["command"], shown["0"]["settings"]["env"]) == (COMMAND, ENV)


async def test_each_view_is_built_once_per_definition(make_fleet):
    fleet = await make_fleet({0: BACKENDS[0], 1: {"settings": {"command": SLEEPER}}})
    ctx = ApiContext(fleet)
    await listing(ctx, "admin")
    await listing(ctx, "poweruser")
    secrets, plain = fleet.get(0), fleet.get(1)
    views = secrets.api_cache  # (definition, plain json, masked json)
    assert views[1] is not None and views[2] is not None and views[1] != views[2]
    assert plain.api_cache[1] is plain.api_cache[2]  # nothing to hide: one view for both
    await listing(ctx, "poweruser")
    await listing(ctx, "admin")
    assert secrets.api_cache[1] is views[1] and secrets.api_cache[2] is views[2]  # reused, not rebuilt
    await fleet.edit(0, title="t", settings={"env": "HF_TOKEN=new"})
    assert (await listing(ctx, "poweruser"))["0"]["settings"]["env"] == f"HF_TOKEN={M}"
    assert (await listing(ctx, "admin"))["0"]["settings"]["env"] == "HF_TOKEN=new"


async def test_an_admin_edit_sending_masked_values_back_keeps_the_stored_ones(make_fleet):
    fleet = await make_fleet(BACKENDS)
    ctx = ApiContext(fleet)
    answer = await edit_backend(ctx, caller("admin"), {"settings": {"env": f"HF_TOKEN={M}\nPLAIN=new",
                                                                     "command": COMMAND_MASKED}},
                                backend_id=0, title="t", new_id=-1)
    assert answer["settings"]["env"] == f"HF_TOKEN=hf_{MARK}4\nPLAIN=new"  # an admin's answer is not masked
    assert answer["settings"]["command"] == COMMAND
    assert fleet.get(0).settings["env"] == f"HF_TOKEN=hf_{MARK}4\nPLAIN=new"
    await edit_backend(ctx, caller("owner"), {"settings": {"env": M, "command": M}}, backend_id=0, title="t",
                       new_id=-1)
    assert (fleet.get(0).settings["env"], fleet.get(0).settings["command"]) == (
        f"HF_TOKEN=hf_{MARK}4\nPLAIN=new", COMMAND)
    # an env mapping (a swarmd extension of the API) is unmasked the same way
    await fleet.edit(0, title="t", settings={"env": {"HF_TOKEN": M, "X": "1"}})
    assert fleet.get(0).settings["env"] == f"HF_TOKEN=hf_{MARK}4\nX=1"


async def test_a_mask_that_stands_for_nothing_stored_is_refused(make_fleet):
    fleet = await make_fleet(BACKENDS)
    before = open(fleet.path).read()
    with pytest.raises(FleetError, match=r"Invalid value for setting 'env': it holds the secret mask \(\\t<secret>\) "
                                         r"where no stored value is known: send the value itself"):
        await fleet.edit(0, title="t", settings={"env": f"NEW_TOKEN={M}"})
    with pytest.raises(FleetError, match="Invalid value for setting 'env'"):  # a new backend has nothing stored
        await fleet.add("process", settings={"env": f"HF_TOKEN={M}"})
    with pytest.raises(FleetError, match="Invalid value for setting 'command'"):  # another backend's is not it
        await fleet.edit(1, title="t", settings={"command": COMMAND_MASKED})
    assert open(fleet.path).read() == before
    # the check of names is kept: an unknown setting is refused with the nearest known one
    with pytest.raises(FleetError, match="did you mean 'env'"):
        await fleet.edit(0, title="t", settings={"Env": M})


async def test_objects_returned_to_a_caller_without_admin_are_masked_too(make_fleet):
    fleet = await make_fleet(BACKENDS)
    shown = backend_object(fleet.get(0), masked=True)
    assert (shown["settings"]["env"], shown["settings"]["command"]) == (ENV_MASKED, COMMAND_MASKED)


# -- a real daemon, a real poweruser --------------------------------------------------------------------------


needs_nobody_client = pytest.mark.skipif(
    SETPRIV is None or os.getuid() != 0,
    reason="needs root and setpriv (the poweruser client runs as uid 65534), and swarmd serve --config")


@pytest.fixture(scope="module")
def configured() -> Iterator[Daemon]:
    with daemon_with_config(backend_yaml(BACKENDS), NOBODY_POWERUSER_CONFIG) as running:
        yield running


def poweruser_call(daemon: Daemon, route: str, body: dict) -> tuple[str, dict]:
    """The raw answer text and its JSON, of `swarmctl call` run as uid 65534 (a poweruser)."""
    argv = [*nobody_ctl_argv(), "--socket", str(daemon.socket), "--json", "call", route, json.dumps(body)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=30)
    assert done.returncode == 0, done
    return done.stdout, json.loads(done.stdout)


@needs_nobody_client
@pytest.mark.parametrize("full_data", [False, True])
def test_a_poweruser_sees_no_secret_in_list_backends(configured: Daemon, full_data: bool):
    text, shown = poweruser_call(configured, "ListBackends", {"full_data": full_data})
    assert MARK not in text
    assert shown["0"]["settings"]["env"] == ENV_MASKED
    assert shown["0"]["settings"]["command"] == COMMAND_MASKED
    assert shown["1"]["settings"] == configured.ok("ListBackends")["1"]["settings"] | {"env": f"A={M}"}


@needs_nobody_client
def test_an_admin_sees_every_secret(configured: Daemon):
    shown = configured.ok("ListBackends", {"full_data": True})  # root: owner
    assert (shown["0"]["settings"]["command"], shown["0"]["settings"]["env"]) == (COMMAND, ENV)


@needs_nobody_client
def test_an_admin_edit_sending_a_masked_value_back_keeps_the_stored_value_in_the_file(configured: Daemon):
    _, shown = poweruser_call(configured, "ListBackends", {})
    settings = shown["2"]["settings"]
    assert settings["env"] == ENV_MASKED
    answer = configured.ok("EditBackend", {"backend_id": 2, "title": "edited", "settings": {
        "env": settings["env"].replace(f"PLAIN={M}", "PLAIN=changed"), "command": settings["command"]}})
    assert answer["settings"]["env"] == f"HF_TOKEN=hf_{MARK}4\nPLAIN=changed\n# a comment\nEMPTY="
    text = configured.file_bytes().decode()
    entry = text[text.index("\n  2:"):]
    assert f"hf_{MARK}4" in entry and "PLAIN=changed" in entry and M not in text
    assert configured.backend(2)["settings"]["command"] == COMMAND
    configured.file_is_valid()
