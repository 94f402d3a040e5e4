"""Status latency: one full status call over each system's in-process keep-alive client."""

from __future__ import annotations

import socket
import threading
import time

from bench.report import Goal, Result
from bench.session import Settings, budgeted, guarded, log, running
from bench.systems import Supervisord, Swarmd, System

#: Clients that connect at once in the burst case, each with this timeout for its whole exchange.
BURST_CLIENTS = 500
BURST_TIMEOUT = 1.0

NAME = "status"


def run(settings: Settings) -> Result:
    """Status latency at 10, 100 and 1000 children (quick: 10 and 100)."""
    result = Result(NAME, "Status latency: one status call, in-process keep-alive client")
    result.goals.append(Goal("status", "n=1000", 10.0, "status at 1000 under 10 ms"))
    result.goals.append(Goal("burst refused", f"{BURST_CLIENTS} at once", 0.5,
                             f"{BURST_CLIENTS} clients connecting at once, {BURST_TIMEOUT:g} s timeout: all served"))
    result.notes.append("swarmd: POST /API/ListBackends {\"full_data\": true} over http.client on the unix "
                        "socket; supervisord: supervisor.getAllProcessInfo over XML-RPC on its unix socket; "
                        "circus: the `status` command through CircusClient (ZeroMQ ipc); replies parsed. "
                        "'status {}': swarmd's ListBackends without full_data (no peer equivalent). "
                        f"burst (at n=10): {BURST_CLIENTS} threads connect to the unix socket at once (a barrier), "
                        f"each with a {BURST_TIMEOUT:g} s timeout for connect + one light call (swarmd "
                        "GetDaemonStatus, supervisord getState over XML-RPC); the figure is how many got no 200 "
                        "answer (refused, EAGAIN or timed out); circus has no listen backlog (ZeroMQ queues)")
    for count in settings.sizes([10, 100, 1000], [10, 100]):
        for cls in settings.systems:
            with guarded(result.notes, f"status {cls.name} n={count}"), running(cls, count, settings) as (
                system, _spawn,
            ):
                time.sleep(1.0)
                for _ in range(3):
                    system.status()
                if isinstance(system, Swarmd):
                    result.notes += _check_swarmd(system, count)
                reps = budgeted(*((50, 5, 5.0) if settings.quick else (300, 15, 20.0)))
                for _index in reps:
                    start = time.perf_counter()
                    system.status()
                    result.add("status", f"n={count}", "ms", cls.name, (time.perf_counter() - start) * 1000)
                if isinstance(system, Swarmd):  # the short form too: {} instead of full_data
                    for _index in budgeted(*((50, 5, 3.0) if settings.quick else (300, 15, 10.0))):
                        start = time.perf_counter()
                        system.status(full_data=False)
                        result.add("status {}", f"n={count}", "ms", cls.name,
                                   (time.perf_counter() - start) * 1000)
                if count == 10 and cls in (Swarmd, Supervisord):
                    refused = _burst(system)
                    result.add("burst refused", f"{BURST_CLIENTS} at once", "clients", cls.name, refused)
                    log(f"burst {cls.name}: {refused} of {BURST_CLIENTS} clients not served in {BURST_TIMEOUT:g} s")
                fig = result.get("status", f"n={count}", cls.name)
                if fig is not None:
                    log(f"status {cls.name} n={count}: median {fig.median:.2f} ms over {len(fig.samples)}")
    return result


def _check_swarmd(system: Swarmd, count: int) -> list[str]:
    """ListBackends must say `running` with the pid each child stamped; returns the mismatches as notes."""
    answer = system.status()
    wrong = []
    for ident, label in system.programs.items():
        entry = answer.get(str(ident), {})
        stamp = system.stamps.latest(label)
        if entry.get("status") != "running" or stamp is None or entry.get("pid") != stamp.pid:
            wrong.append(f"{ident}: {entry.get('status')} pid {entry.get('pid')} (child pid "
                         f"{stamp.pid if stamp else None})")
    if wrong:
        return [f"swarmd n={count}: ListBackends wrong for {len(wrong)} backends, e.g. {wrong[:3]}"]
    return []


def _burst_request(system: System) -> tuple[str, bytes]:
    """(socket path, one raw HTTP request) of a light status call of `system`."""
    if isinstance(system, Swarmd):
        body = b"{}"
        head = b"POST /API/GetDaemonStatus HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        return system.socket, head + b"Content-Length: 2\r\nConnection: close\r\n\r\n" + body
    assert isinstance(system, Supervisord)
    body = (b"<?xml version='1.0'?><methodCall><methodName>supervisor.getState</methodName>"
            b"<params></params></methodCall>")
    head = b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
    return system.socket, head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body


def _burst(system: System) -> int:
    """How many of BURST_CLIENTS clients connecting at once got no 200 answer within BURST_TIMEOUT."""
    path, request = _burst_request(system)
    barrier = threading.Barrier(BURST_CLIENTS)
    served: list[bool] = []

    def client() -> None:
        ok = False
        barrier.wait()
        deadline = time.monotonic() + BURST_TIMEOUT
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(BURST_TIMEOUT)
                sock.connect(path)
                sock.sendall(request)
                answer = b""
                while b"\r\n" not in answer:
                    sock.settimeout(max(0.001, deadline - time.monotonic()))
                    data = sock.recv(4096)
                    if not data:
                        break
                    answer += data
                ok = answer.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))
        except OSError:
            ok = False
        served.append(ok)

    threads = [threading.Thread(target=client) for _ in range(BURST_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return served.count(False)
