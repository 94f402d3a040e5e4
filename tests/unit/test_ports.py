"""swarmd.supervise.ports with real sockets and real processes: which sockets listen on a port (IPv4 and
IPv6, any address), who holds them, a process group's members, and the readiness probe's ownership rule
(issue #13) -- plus the probes that use it."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import pytest
import trio

from swarmd.supervise import ports, probes
from tests.helpers import NOBODY, ROOT, alive, nobody_can_import_swarmd, wait_until

PY = sys.executable


def listener(host: str = "127.0.0.1", family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen()
    return sock


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def free_port() -> int:
    """A port nothing listens on (bound and released: nothing else takes it in the next moment)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: A child that listens on a port of its own (in its own session, so its pid is its group) and says which.
HOLDER = textwrap.dedent("""\
    import socket, sys, time
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    print(sock.getsockname()[1], flush=True)
    time.sleep(120)
""")


@contextlib.contextmanager
def child(code: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`python -c code args` in a new session; yields it and the first line it prints."""
    proc = subprocess.Popen([PY, "-c", code, *args], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        yield proc, proc.stdout.readline().strip()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()


# -- listening_inodes ---------------------------------------------------------------------------------------


def test_listening_inodes_ipv4_any_address():
    for host in ("127.0.0.1", "0.0.0.0"):
        with listener(host) as sock:
            port = sock.getsockname()[1]
            assert ports.listening_inodes(port) == {inode(sock)}, host
        assert ports.listening_inodes(port) == set()


def test_listening_inodes_ipv6_any_address():
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    for host in ("::1", "::"):
        with listener(host, socket.AF_INET6) as sock:
            port = sock.getsockname()[1]
            assert ports.listening_inodes(port) == {inode(sock)}, host


def test_listening_inodes_only_listening_sockets_on_that_port():
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # bound, not listening
        assert ports.listening_inodes(bound.getsockname()[1]) == set()
    with listener() as server, listener() as other:
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        with client, accepted:
            # the accepted connection has the same local port, but it is ESTABLISHED, not LISTEN
            assert ports.listening_inodes(port) == {inode(server)}
            assert inode(accepted) not in ports.listening_inodes(port)
            assert ports.listening_inodes(other.getsockname()[1]) == {inode(other)}


def test_listening_inodes_two_sockets_on_one_port():
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    with listener() as v4:
        port = v4.getsockname()[1]
        try:
            v6 = socket.socket(socket.AF_INET6)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            v6.bind(("::1", port))
            v6.listen()
        except OSError:
            pytest.skip("port taken on ::1")
        with v6:
            assert ports.listening_inodes(port) == {inode(v4), inode(v6)}


# -- owner ------------------------------------------------------------------------------------------------


def test_owner_names_the_pid_and_its_command():
    assert ports.owner(free_port()) is None
    with child(HOLDER) as (proc, line):
        port = int(line)
        message = ports.owner(port)
        assert message is not None
        assert message.startswith(f"port {port} is in use by pid {proc.pid} ({PY} -c import socket, sys, time")
        assert message.endswith("...)")  # the command line is shortened
        inside = message[message.index("(") + 1:-1]
        assert len(inside) == ports.COMMAND_MAX
    assert ports.owner(port) is None  # its holder is gone


def test_owner_short_command_is_whole():
    with listener() as sock:
        port = sock.getsockname()[1]
        message = ports.owner(port)
    # this test process holds it: its own pid, its own command line (shortened, or whole if short)
    assert message is not None and message.startswith(f"port {port} is in use by pid {os.getpid()} (")
    assert ports.command_line(os.getpid()) in message
    assert ports.command_line(2**22 + 12345) == "?"  # no such process


def test_owner_not_visible(monkeypatch):
    with listener() as sock:
        port = sock.getsockname()[1]
        monkeypatch.setattr(ports, "_pids", lambda: iter([2**22 + 12345]))  # a process that is gone
        assert ports.owner(port) == f"port {port} is in use (its owner is not visible to swarmd)"


def test_another_users_view_owner_not_visible_and_the_group_rule(tmp_path):
    """As uid 65534, a root process's descriptors cannot be read: owner() says so, owned_by() is False and
    the readiness rule gives the benefit of the doubt (it cannot tell)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or not setpriv or not nobody_can_import_swarmd():
        pytest.skip("needs root, setpriv, and a checkout uid 65534 can import")
    with listener() as sock, child(HOLDER) as (proc, _line):
        port = sock.getsockname()[1]
        code = (f"from swarmd.supervise import ports; print(ports.owner({port})); "
                f"print(ports.owned_by({port}, [{os.getpid()}])); print(ports.group_may_own({port}, {proc.pid}))")
        out = subprocess.run([setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", PY,
                              "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"port {port} is in use (its owner is not visible to swarmd)", "False", "True"]


# -- group_pids, owned_by, group_may_own -------------------------------------------------------------------


#: A group leader that starts a grandchild (which holds a listening socket) and a zombie (never reaped),
#: then prints "PORT GRANDCHILD_PID ZOMBIE_PID".
FAMILY = textwrap.dedent("""\
    import os, subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True)
    port = grandchild.stdout.readline().strip()
    zombie = os.fork()
    if zombie == 0:
        os._exit(0)
    print(port, grandchild.pid, zombie, flush=True)
    time.sleep(120)
""")


def test_group_pids_owned_by_and_the_readiness_rule():
    with child(FAMILY, HOLDER) as (leader, line):
        port, grandchild, zombie = (int(word) for word in line.split())
        wait_until(lambda: not alive(zombie), what="the forked child to be a zombie")
        assert ports.group_pids(leader.pid) == [leader.pid, grandchild]  # the zombie left out
        assert ports.group_pids(os.getpgrp()) and leader.pid not in ports.group_pids(os.getpgrp())
        assert ports.group_pids(2**22 + 12345) == []

        assert ports.owned_by(port, [grandchild])
        assert ports.owned_by(port, [os.getpid(), grandchild])
        assert not ports.owned_by(port, [leader.pid, os.getpid()])
        assert not ports.owned_by(port, [2**22 + 12345])  # a vanished pid: no error
        assert not ports.owned_by(free_port(), [grandchild])
        # the readiness rule: the group holds it (through a member other than the leader)
        assert ports.group_may_own(port, leader.pid)
        # ... the test process's group does not: that listener is provably someone else's
        assert not ports.group_may_own(port, os.getpgrp())
        with listener() as sock:
            # a port this test process holds is not the child group's
            assert not ports.group_may_own(sock.getsockname()[1], leader.pid)
        # nothing listens there: the probe reached another host (or the listener just closed): can't tell
        assert ports.group_may_own(free_port(), leader.pid)


async def test_async_wrappers_run_in_a_thread():
    with listener() as sock:
        port = sock.getsockname()[1]
        assert (await ports.find_owner(port)).startswith(f"port {port} is in use by pid {os.getpid()} (")
        assert await ports.owned_by_group(port, os.getpgrp()) is True
    assert await ports.find_owner(port) is None


def test_the_walks_are_cheap():
    """The walks run in worker threads, yet stay small: each well under a second on a busy CI machine."""
    with listener() as sock:
        port = sock.getsockname()[1]
        started = time.perf_counter()
        for _ in range(10):
            ports.listening_inodes(port)
            ports.owner(port)
            ports.group_pids(os.getpgrp())
            ports.group_may_own(port, os.getpgrp())
        assert (time.perf_counter() - started) / 10 < 0.5


# -- probes with owned ----------------------------------------------------------------------------------------


class Ok(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args):
        pass


@contextlib.contextmanager
def http_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("kind", ["tcp", "http"])
async def test_a_probe_answered_by_another_process_is_not_readiness(kind):
    with http_server() as port:
        check = "tcp" if kind == "tcp" else f"http://127.0.0.1:{port}/"
        asked = []
        mine = False

        async def owned() -> bool:
            asked.append(trio.current_time())
            return mine

        with trio.move_on_after(1.0) as waiting:
            await probes.wait_ready(check, port, owned)
        assert waiting.cancelled_caught  # answered, but not by the backend: not ready
        assert 3 <= len(asked) <= 12  # asked after each answer, with the gentle backoff (no busy loop)
        mine = True
        with trio.fail_after(5):
            await probes.wait_ready(check, port, owned)
        with trio.fail_after(5):  # without `owned`, any answer counts, as before
            await probes.wait_ready(check, port)


async def test_backend_owns_asks_about_the_port_the_check_reaches():
    assert probes.backend_owns("none", 5000, 1) is None
    assert probes.backend_owns("log:ready", 5000, 1) is None
    assert probes.probed_port("tcp", 5000) == 5000
    assert probes.probed_port("http://127.0.0.1:8188/system_stats", 5000) == 8188
    assert probes.probed_port("http://[::1]/", 5000) == 80
    assert probes.probed_port("http://localhost:9000/", 5000) == 9000
    # another machine's URL: nothing of this machine to look at, any answer counts (as before)
    assert probes.probed_port("http://192.0.2.7:8188/", 5000) == 0
    assert probes.probed_port("http://comfy.example:8188/", 5000) == 0  # a name is not looked up
    assert probes.backend_owns("http://192.0.2.7:8188/", 8188, 1) is None
    assert probes.is_this_machine("0.0.0.0") and probes.is_this_machine("127.9.9.9")
    assert not probes.is_this_machine("192.0.2.7")
    with http_server() as port:
        this = probes.backend_owns(f"http://127.0.0.1:{port}/", 0, os.getpgrp())
        assert this is not None and await this() is True  # this test process serves it
        with child(HOLDER) as (proc, _line):
            theirs = probes.backend_owns(f"http://127.0.0.1:{port}/", 0, proc.pid)
            assert theirs is not None and await theirs() is False
            with trio.move_on_after(0.5) as waiting:
                await probes.wait_ready(f"http://127.0.0.1:{port}/", 0, theirs)
            assert waiting.cancelled_caught


# -- ComfyUI: --listen in ExtraArgs is the operator's, --port is swarmd's, its venv comes first on PATH -------


def comfy(tmp_path, **changes):
    from swarmd.types import TYPES

    script = tmp_path / "main.py"
    script.write_text("")
    selfstart = TYPES["comfyui_selfstart"]
    settings = {**selfstart.defaults(), "StartScript": str(script), "python": "python3", **changes}
    return selfstart.launch(settings, 8188)


@pytest.mark.parametrize("extra, args, probed", [
    ("", ["--listen", "127.0.0.1", "--preview-method", "auto"], "127.0.0.1"),
    ("--listen 0.0.0.0", ["--listen", "0.0.0.0", "--preview-method", "auto"], "127.0.0.1"),
    ("--listen", ["--listen", "--preview-method", "auto"], "127.0.0.1"),  # bare: 0.0.0.0,::
    ("--listen=0.0.0.0,:: --lowvram", ["--listen=0.0.0.0,::", "--lowvram", "--preview-method", "auto"],
     "127.0.0.1"),
    ("--lis ::", ["--lis", "::", "--preview-method", "auto"], "[::1]"),  # argparse's abbreviation
    ("--listen ::1", ["--listen", "::1", "--preview-method", "auto"], "[::1]"),
    ("--listen 127.2.2.2,127.3.3.3", ["--listen", "127.2.2.2,127.3.3.3", "--preview-method", "auto"],
     "127.2.2.2"),
    ("--listen 192.0.2.7,127.0.0.1", ["--listen", "192.0.2.7,127.0.0.1", "--preview-method", "auto"],
     "127.0.0.1"),
    ("--listen 192.0.2.7", ["--listen", "192.0.2.7", "--preview-method", "auto"], "192.0.2.7"),
    ("--listen localhost", ["--listen", "localhost", "--preview-method", "auto"], "127.0.0.1"),
    ("--listen 2001:db8::5", ["--listen", "2001:db8::5", "--preview-method", "auto"], "[2001:db8::5]"),
    ("--listen comfy.lan", ["--listen", "comfy.lan", "--preview-method", "auto"], "comfy.lan"),
    ("--listen 1.2.3.4 --listen 0.0.0.0", ["--listen", "1.2.3.4", "--listen", "0.0.0.0", "--preview-method",
                                           "auto"], "127.0.0.1"),  # the last one wins, as in argparse
])
def test_comfyui_listen_in_extra_args_is_respected_and_probed(tmp_path, extra, args, probed):
    from swarmd.types.comfyui import check_extra_args

    assert check_extra_args(extra) == extra
    spec = comfy(tmp_path, ExtraArgs=extra)
    assert spec.argv[3:] == (*args, "--port", "8188")
    assert spec.ready_check == f"http://{probed}:8188/system_stats"
    assert spec.free_memory == f"http://{probed}:8188/free"
    # DisableInternalArgs: only --port is added; readiness still follows ExtraArgs' --listen
    spec = comfy(tmp_path, ExtraArgs=extra, DisableInternalArgs=True)
    assert spec.argv[3:] == (*shlex.split(extra), "--port", "8188")
    assert spec.ready_check == f"http://{probed}:8188/system_stats"


@pytest.mark.parametrize("extra, message", [
    ("--port 8188", "--port is set by swarmd (the port setting sets the port)"),
    ("--lowvram --port=8188", "--port is set by swarmd (the port setting sets the port)"),
    ("--por 1", "--port is set by swarmd (the port setting sets the port)"),
    ("--lowvram -- --x", "a bare -- would turn swarmd's own --port into a stray argument"),
    ("--listen 'a b'", "--listen: 'a b' is not an IP address or host name"),
    ("--listen=[::1]", "--listen: '[::1]' is not an IP address or host name"),
])
def test_comfyui_extra_args_refused(extra, message):
    from swarmd.settings import SettingError
    from swarmd.types import TYPES

    spec = TYPES["comfyui_selfstart"].spec("ExtraArgs")
    for parse in (spec.from_api, spec.from_file):
        with pytest.raises(SettingError) as caught:
            parse(extra)
        assert str(caught.value) == message


def test_comfyui_venv_bin_first_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin")
    venv_python = tmp_path / "venv" / "bin" / "python3"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(PY)
    # python empty: the script's venv/bin/python3, and its bin first on PATH
    spec = comfy(tmp_path, python="")
    assert spec.argv[0] == str(venv_python)
    assert spec.env["PATH"] == f"{venv_python.parent}:/usr/local/bin:/usr/bin"
    # the same interpreter named in the python setting (absolute or relative to the script)
    assert comfy(tmp_path, python=str(venv_python)).env["PATH"] == spec.env["PATH"]
    assert comfy(tmp_path, python="venv/bin/python3").env["PATH"] == spec.env["PATH"]
    # another virtual environment (a pyvenv.cfg beside its bin/)
    other = tmp_path / "other-env"
    (other / "bin").mkdir(parents=True)
    (other / "pyvenv.cfg").write_text("home = /usr/bin\n")
    assert comfy(tmp_path, python=str(other / "bin" / "python")).env["PATH"] == f"{other / 'bin'}:/usr/local/bin:/usr/bin"
    # python3 from PATH, or a plain interpreter: PATH untouched (the daemon's)
    assert "PATH" not in comfy(tmp_path, python="python3").env
    assert "PATH" not in comfy(tmp_path, python="/usr/bin/python3").env
