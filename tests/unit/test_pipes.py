"""The output path's pure parts: LineSplitter (reads -> complete lines) and the byte- and line-bounded ring;
and PipeReader with real pipes: one task for every pipe, a failing owner is its own fault."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmd.supervise import output
from swarmd.supervise.output import LINE_OVERHEAD, OutputRing
from swarmd.supervise.pipes import CUT_MARK, MAX_LINE, LineSplitter, PipeReader


def split_all(reads: list[bytes]) -> list[str]:
    splitter = LineSplitter()
    lines: list[str] = []
    for data in reads:
        text = splitter.feed(data)
        if text is not None:
            lines += text.split("\n")
    last = splitter.finish()
    return lines + ([last] if last is not None else [])


def expected_lines(stream: bytes) -> list[str]:
    """What a reader should see of `stream` as a whole: lines cut at MAX_LINE with the mark, CR before a
    newline (or at the end) dropped, the rest of a cut line dropped."""
    lines = stream.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    out = []
    for raw in lines:
        if len(raw) > MAX_LINE:
            out.append(raw[:MAX_LINE].decode("utf-8", "replace") + CUT_MARK)
            continue
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        out.append(raw.decode("utf-8", "replace"))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"bc\n", b"\n", b"\r\n", b"\xc3\xa9", b"\xff", b"x" * 40000, b"\r"]),
                max_size=12),
       st.lists(st.integers(1, 70000), min_size=1, max_size=5))
def test_any_split_into_reads_gives_the_lines_of_the_whole(pieces: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(pieces)
    reads, at = [], 0
    for size in cuts * (len(stream) // max(1, min(cuts)) + 1):
        if at >= len(stream):
            break
        reads.append(stream[at:at + size])
        at += size
    assert split_all(reads) == expected_lines(stream)


def test_a_line_without_end_is_cut_once_and_its_rest_dropped() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"x" * 60000) is None
    assert splitter.feed(b"x" * 60000) == "x" * MAX_LINE + CUT_MARK  # delivered at once, not held
    for _ in range(100):  # 6 MB more of the same line: nothing held, nothing delivered
        assert splitter.feed(b"x" * 60000) is None
    assert splitter.feed(b"x\nnext\npart") == "next"
    assert splitter.finish() == "part"
    assert splitter.finish() is None


def ring_lines(ring: OutputRing) -> list[str]:
    return [line.text for line in ring.since(0)]


def test_the_ring_is_bounded_in_lines_and_numbers_every_line() -> None:
    ring = OutputRing(lines=10)
    start = output.last_sequence_id()
    ring.append_lines("stdout", "\n".join(f"a{n}" for n in range(7)))
    ring.append_lines("stderr", "\n".join(f"b{n}" for n in range(7)))
    assert len(ring) == 10 and ring.last_seq == start + 14
    got = ring.since(0)
    assert [line.text for line in got] == [f"a{n}" for n in range(4, 7)] + [f"b{n}" for n in range(7)]
    assert [line.seq for line in got] == list(range(start + 5, start + 15))
    assert [line.stream for line in got] == ["stdout"] * 3 + ["stderr"] * 7
    assert [line.text for line in ring.since(start + 12)] == ["b5", "b6"]
    assert [line.text for line in ring.tail(3)] == ["b4", "b5", "b6"]
    assert ring.since(start + 14) == [] and ring.tail(0) == []


def test_the_ring_is_bounded_in_bytes_and_counts_what_it_took_in() -> None:
    ring = OutputRing(lines=1_000_000, size=64 * 1024)
    for chunk in range(100):
        ring.append_lines("stdout", "\n".join(f"{chunk:03d}-{n:03d} " + "z" * 90 for n in range(100)))
    assert ring.size <= 64 * 1024
    kept = ring_lines(ring)
    assert kept[-1] == "099-099 " + "z" * 90 and len(kept) == len(ring)
    assert sum(len(text) for text in kept) <= 64 * 1024
    assert ring.lines_in == 100 * 100 and ring.bytes_in == 100 * (100 * 98 + 99)
    big = OutputRing(lines=1000, size=64 * 1024)  # one chunk larger than the ring: its newest lines stay
    big.append_lines("stdout", "\n".join(f"{n:05d} " + "q" * 994 for n in range(200)))
    assert big.size <= 64 * 1024 and ring_lines(big)[-1].startswith("00199 ")
    assert [int(text.split()[0]) for text in ring_lines(big)] == list(range(200 - len(big), 200))


def test_entries_of_the_daemon_may_span_lines() -> None:
    ring = OutputRing(3)
    entry = ring.append("swarmd", "Traceback:\n  frame\nError")
    assert ring.since(entry.seq - 1) == [entry] and len(ring) == 1


def test_a_bounded_read_gives_the_oldest_lines_that_fit_then_the_rest() -> None:
    ring = OutputRing()
    ring.append_lines("stdout", "\n".join("L" * 100 for _ in range(50)))
    first = ring.since(0, budget=10 * (100 + LINE_OVERHEAD))
    assert len(first) == 10
    rest = ring.since(first[-1].seq)
    assert len(rest) == 40 and rest[0].seq == first[-1].seq + 1
    assert len(ring.since(0, budget=1)) == 1  # at least one: a reader always gets further


async def test_one_task_reads_every_pipe_and_a_failing_owner_fails_alone() -> None:
    got: dict[str, list[str]] = {"good": [], "bad": []}

    def bad_owner(stream: str, text: str) -> None:
        raise RuntimeError("a bug of this backend's")

    async with trio.open_nursery() as nursery:
        reader = PipeReader(nursery)
        (good_r, good_w), (bad_r, bad_w) = os.pipe(), os.pipe()
        good = reader.watch([(good_r, "stdout")], lambda stream, text: got["good"].append(text))
        bad = reader.watch([(bad_r, "stdout")], bad_owner)
        assert len(nursery.child_tasks) == 1  # one reader task, not one per pipe
        os.write(bad_w, b"boom\n")
        with trio.fail_after(5):
            await bad.closed.wait()
        assert isinstance(bad.error, RuntimeError)
        os.write(good_w, b"one\ntwo\nthr")
        os.close(good_w)
        with trio.fail_after(5):
            await good.closed.wait()
        assert got["good"] == ["one\ntwo", "thr"] and good.error is None
        os.close(bad_w)
    assert not nursery.child_tasks  # no pipe left: the reader task ended


def _sleeper(seconds: float) -> tuple[subprocess.Popen[bytes], int]:
    """A real child that exits after `seconds`, and its pidfd."""
    child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
    return child, os.pidfd_open(child.pid)


class _Watcher:
    """An owner's `ExitWatcher`, from two callables."""

    def __init__(self, exited: Callable[[], None], cancelled: Callable[[], None]) -> None:
        self.exited, self.cancelled = exited, cancelled


async def test_the_reader_watches_exits_with_no_task_per_process_and_a_failing_owner_fails_alone() -> None:
    done: list[str] = []
    children = [_sleeper(0.2), _sleeper(0.4), _sleeper(600)]
    try:
        async with trio.open_nursery() as nursery:
            reader = PipeReader(nursery)

            def fails() -> None:
                done.append("first")
                raise RuntimeError("a bug of this backend's")

            reader.watch_exit(children[0][1], _Watcher(fails, lambda: done.append("first cancelled")))
            reader.watch_exit(children[1][1], _Watcher(lambda: done.append("second"), lambda: done.append("no")))
            reader.watch_exit(children[2][1], _Watcher(lambda: done.append("no"), lambda: done.append("no")))
            assert len(nursery.child_tasks) == 1  # one task waits for every exit
            with trio.fail_after(10):
                while len(done) < 2:
                    await trio.sleep(0.01)
            assert done == ["first", "second"]  # the first owner's failure stopped nothing
            reader.forget_exit(children[2][1])  # (its owner reaps it itself)
            with trio.fail_after(5):
                while nursery.child_tasks:  # nothing left to watch: the task ends
                    await trio.sleep(0.01)
    finally:
        for child, pidfd in children:
            child.kill()
            child.wait()
            os.close(pidfd)


async def test_a_reader_cancelled_from_outside_tells_every_owner_whose_process_lives() -> None:
    told: list[str] = []
    child, pidfd = _sleeper(600)
    try:
        async with trio.open_nursery() as nursery:
            reader = PipeReader(nursery)
            reader.watch_exit(pidfd, _Watcher(lambda: told.append("exited"), lambda: told.append("cancelled")))
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()  # the daemon stops at once
        assert told == ["cancelled"]  # its shell SIGKILLs the group then (never an orphan)
        assert child.poll() is None  # (the reader itself kills nothing)
    finally:
        child.kill()
        child.wait()
        os.close(pidfd)
