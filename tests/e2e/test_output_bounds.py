"""Output memory is bounded in bytes, whatever the backends print: 16 real children each print 80 MB
without a newline (then one short line), and the daemon's rings, its log answers and its RSS stay within
their bounds. Not timed: the figures that matter are sizes."""

from __future__ import annotations

import json
import shlex
import sys

from swarmd.api.routes import LOG_ANSWER_BYTES
from swarmd.supervise.output import LINE_OVERHEAD
from swarmd.supervise.pipes import CUT_MARK, MAX_LINE
from tests.helpers import rss_bytes, wait_until

CHILDREN = 16
MEGABYTES = 80
RING_BYTES = 256 * 1024  # set in the daemon config: smaller than the default, so that a bound is hit
JUNK = (f"import sys, time\nout = sys.stdout.buffer\nblock = b'x' * 65536\n"
        f"for _ in range({MEGABYTES * 16}):\n    out.write(block)\n"
        "out.write(b'\\nafter the junk\\n')\nout.flush()\n"
        # then lines, more bytes than the ring holds: the byte bound, not the line bound, must act
        "for n in range(4000):\n    out.write(b'%d ' % n + b'y' * 200 + b'\\n')\nout.flush()\n"
        "print('done', flush=True)\ntime.sleep(3600)\n")


def test_long_lines_and_floods_leave_rings_and_answers_within_their_byte_bounds(tmp_path, start_daemon):
    config = tmp_path / "swarmd.yaml"
    config.write_text(f"output_ring_bytes: {RING_BYTES}\n")
    backends = {i: {"settings": {"command": shlex.join([sys.executable, "-c", JUNK])}} for i in range(CHILDREN)}
    daemon = start_daemon(backends, extra_args=("--config", str(config)))
    names = [f"backend-{i}" for i in range(CHILDREN)]
    wait_until(lambda: all(daemon.backend(i)["status"] == "running" for i in range(CHILDREN)))
    before = rss_bytes(daemon.proc.pid)

    # The children are done once each log's newest line is "done".
    wait_until(lambda: all(
        (daemon.ok("ListRecentLogMessages", {"types": [name], "last_sequence_ids": {}})["data"][name]
         or [{}])[-1].get("message") == "done" for name in names), timeout=240, what="every child done")
    grown = rss_bytes(daemon.proc.pid) - before
    assert grown < 40e6, f"RSS grew {grown / 1e6:.1f} MB for {CHILDREN} x {MEGABYTES} MB without newlines"

    for name in names:  # one log at a time: its whole ring, within the ring's byte bound
        messages = daemon.ok("ListRecentLogMessages", {"types": [name], "last_sequence_ids": {}})["data"][name]
        text = sum(len(m["message"].encode()) for m in messages)
        assert text <= RING_BYTES, (name, text)
        assert messages[-1]["message"] == "done"
        assert [int(m["message"].split()[0]) for m in messages[:-1]] == list(range(4000 - len(messages) + 1, 4000))

    # All 16 logs at once: the answer is bounded, and the marks it gives let a reader continue.
    answer = daemon.call("ListRecentLogMessages", {"types": names, "last_sequence_ids": {}})
    assert answer.status_code == 200
    assert len(answer.content) <= LOG_ANSWER_BYTES + 64 * 1024
    data = json.loads(answer.content)["data"]
    used = sum(len(m["message"]) + LINE_OVERHEAD for messages in data.values() for m in messages)
    assert used <= LOG_ANSWER_BYTES + MAX_LINE + LINE_OVERHEAD
    marks = {name: messages[-1]["sequence_id"] for name, messages in data.items() if messages}
    rest = daemon.ok("ListRecentLogMessages", {"types": names, "last_sequence_ids": marks})["data"]
    short = [name for name in names if not data[name]]
    assert short and all(rest[name] for name in short)  # what did not fit comes on the next call


def test_a_line_without_newline_is_kept_cut_with_a_marker(start_daemon):
    code = ("import sys, time\nout = sys.stdout.buffer\nout.write(b'x' * (5 * 1024 * 1024))\n"
            "out.write(b' tail of the long line\\nnext line\\n')\nout.flush()\ntime.sleep(3600)\n")
    daemon = start_daemon({0: {"settings": {"command": shlex.join([sys.executable, "-c", code])}}})

    def lines() -> list[str]:
        answer = daemon.ok("ListRecentLogMessages", {"types": ["backend-0"], "last_sequence_ids": {}})
        return [m["message"] for m in answer["data"]["backend-0"]]

    wait_until(lambda: "next line" in lines(), timeout=60, what="the line after the long one")
    cut, following = lines()[-2:]
    assert cut == "x" * MAX_LINE + CUT_MARK and following == "next line"
