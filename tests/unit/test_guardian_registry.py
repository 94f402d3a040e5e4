"""The guardian's registry file (supervise/guardian.py's `Registry`, `read_orders`): the slot table the daemon
keeps in a memfd, read back as the guardian reads it; and the window of start times by which the guardian
tells a start's leader from a stranger that reused its pid (`_still_ours`, against a fake /proc)."""

from __future__ import annotations

import os
import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmd.supervise import guardian as core

SLOT = core.SLOT
BLANK = b" " * (SLOT - 1) + b"\n"


@pytest.fixture
def fd():
    fd = os.memfd_create("test-registry", os.MFD_CLOEXEC)
    yield fd
    os.close(fd)


def contents(fd: int) -> bytes:
    return os.pread(fd, 1 << 20, 0)


def slots(fd: int) -> list[bytes]:
    data = contents(fd)
    assert len(data) % SLOT == 0
    return [data[i:i + SLOT] for i in range(0, len(data), SLOT)]


def test_the_header_goes_first_and_each_start_takes_one_slot(fd):
    registry = core.Registry(fd, "Iabc\nR10 20 30 40\n")
    registry.add(100, "+100 5:6 abc.1")
    registry.add(200, "+200 7:8 abc.2")
    assert [s.rstrip(b" \n") for s in slots(fd)] == [b"Iabc", b"R10 20 30 40", b"+100 5:6 abc.1", b"+200 7:8 abc.2"]
    assert all(len(s) == SLOT and s.endswith(b"\n") and s.count(b"\n") == 1 for s in slots(fd))
    assert registry.remove(100)
    assert slots(fd)[2] == BLANK  # blanked in place: the file keeps its size
    assert len(slots(fd)) == 4
    assert not registry.remove(100)  # nothing left under that key
    registry.add(300, "+300 9:9 abc.3")
    assert slots(fd)[2].rstrip(b" \n") == b"+300 9:9 abc.3"  # the freed slot, not a new one
    assert registry.end == 4


def test_a_long_record_takes_whole_consecutive_slots_and_a_freed_run_is_reused(fd):
    registry = core.Registry(fd, "Iabc\n")
    cgroup = "/sys/fs/cgroup/" + "x" * 200
    registry.add(1, f"+1 2:3 abc.1 {cgroup}")
    line = contents(fd)[SLOT:]
    assert len(line) == 2 * SLOT and line.count(b"\n") == 1 and line.endswith(b"\n")
    assert core.read_orders(fd).starts == [(1, (2, 3), "abc.1", cgroup)]
    registry.add(2, "+2 4:5 abc.2")  # after it
    assert registry.end == 4
    registry.remove(1)
    assert contents(fd)[SLOT:3 * SLOT] == BLANK * 2
    registry.add(3, f"+3 6:7 abc.3 {cgroup}")  # the two slots freed
    assert registry.end == 4
    registry.remove(3)
    registry.add(4, "+4 8:9 abc.4")  # one slot of the two...
    registry.add(5, "+5 8:9 abc.5")  # ...and the other
    assert registry.end == 4
    registry.add(6, "+6 8:9 abc.6")  # none free: the file grows
    assert registry.end == 5
    assert sorted(core.read_orders(fd).starts) == [(2, (4, 5), "abc.2", ""), (4, (8, 9), "abc.4", ""),
                                                   (5, (8, 9), "abc.5", ""), (6, (8, 9), "abc.6", "")]


def test_the_file_grows_at_its_end_and_no_record_straddles_a_page(fd):
    registry = core.Registry(fd)
    for pgid in range(core.PAGE_SLOTS - 1):
        registry.add(pgid, f"+{pgid}")
    assert registry.end == core.PAGE_SLOTS - 1
    registry.add(999, "+999 1:2 t " + "c" * 200)  # two slots: not the page's last and the next page's first
    assert registry.end == core.PAGE_SLOTS + 2
    assert contents(fd)[(core.PAGE_SLOTS - 1) * SLOT:core.PAGE_SLOTS * SLOT] == BLANK  # the one skipped
    registry.add(1000, "+1000")  # which is free
    assert registry.end == core.PAGE_SLOTS + 2
    assert len(core.read_orders(fd).starts) == core.PAGE_SLOTS + 1
    with pytest.raises(ValueError):
        registry.add(1, "+1 1:2 t " + "c" * core.LONGEST)
    with pytest.raises(ValueError):
        registry.add(1, "+1 1:2 t /a\nI")


def test_a_pgid_registered_twice_is_unregistered_oldest_first(fd):
    """A leader's pid reused by the next start before the sweep of the first: both are listed, and the
    sweep's unregister takes the first one's record."""
    registry = core.Registry(fd, "Iabc\n")
    registry.add(7, "+7 1:2 abc.1")
    registry.add(7, "+7 50:51 abc.9")
    assert sorted(core.read_orders(fd).starts) == [(7, (1, 2), "abc.1", ""), (7, (50, 51), "abc.9", "")]
    registry.remove(7)
    assert core.read_orders(fd).starts == [(7, (50, 51), "abc.9", "")]


def test_a_closed_registry_writes_nothing():
    fd = os.memfd_create("test-registry", os.MFD_CLOEXEC)
    registry = core.Registry(fd, "Iabc\n")
    registry.add(1, "+1")
    registry.close()
    registry.add(2, "+2")
    assert not registry.remove(1)
    assert registry.fd == -1


def test_the_reader_takes_the_old_forms_and_skips_what_is_no_record(fd):
    os.pwrite(fd, b"Iabc" + b" " * (SLOT - 5) + b"\n" + b"+5 100 abc.1" + b" " * (SLOT - 13) + b"\n"
              + b"+6 0 abc.2 /cg" + b" " * (SLOT - 15) + b"\n" + b"+x 1:2" + b" " * (SLOT - 7) + b"\n"
              + b"-5\n" + b"+9 unfinished", 0)
    orders = core.read_orders(fd)
    assert orders.instance == "abc"
    assert orders.starts == [(5, (100, 100), "abc.1", ""), (6, (0, 0), "abc.2", "/cg")]


KEYS = st.integers(min_value=1, max_value=40)
TEXTS = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\0"),
                max_size=300).map(lambda text: text.rstrip(" "))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.tuples(st.just("add"), KEYS, st.integers(0, 10**10), st.integers(0, 10**10),
                                    TEXTS),
                          st.tuples(st.just("remove"), KEYS)), max_size=120))
def test_what_the_guardian_reads_is_what_is_registered(operations):
    fd = os.memfd_create("test-registry", os.MFD_CLOEXEC)
    try:
        registry = core.Registry(fd, "Iinst\nR1 2 3 4\n")
        registered: dict[int, list] = {}  # the model: pgid -> its starts, oldest first
        for operation in operations:
            if operation[0] == "add":
                _, pgid, lo, hi, cgroup = operation
                token = f"inst.{lo % 1000}"
                registry.add(pgid, f"+{pgid} {lo}:{hi} {token} /cg/{cgroup}")
                registered.setdefault(pgid, []).append((pgid, (lo, hi), token, f"/cg/{cgroup}"))
            else:
                pgid = operation[1]
                assert registry.remove(pgid) == bool(registered.get(pgid))
                if registered.get(pgid):
                    registered[pgid].pop(0)
            orders = core.read_orders(fd)
            assert sorted(orders.starts) == sorted(start for starts in registered.values() for start in starts)
            assert orders.instance == "inst" and orders.daemon.pid == 1 and orders.daemon.starttime == 2
        data = contents(fd)
        assert len(data) == registry.end * SLOT  # whole slots, each line ending where one does
        assert all((at + 1) % SLOT == 0 for at, byte in enumerate(data) if byte == ord("\n"))
        assert data.endswith(b"\n")
        assert registry.records() == sum(len(starts) for starts in registered.values())
    finally:
        os.close(fd)


# -- the leader's window -----------------------------------------------------------------------------------


def fake_stat(proc, pid: int, starttime: int) -> None:
    directory = proc / str(pid)
    directory.mkdir()
    fields = ["S", "1", str(pid), str(pid)] + ["0"] * 15 + [str(starttime)] + ["0"] * 30
    (directory / "stat").write_text(f"{pid} (a (b) c) {' '.join(fields)}\n")


def test_still_ours_while_the_leader_started_within_the_window_or_is_gone(tmp_path):
    proc = tmp_path
    fake_stat(proc, 100, 5000)
    assert core.parse_stat((proc / "100" / "stat").read_bytes()).starttime == 5000
    assert core._still_ours(100, (4990, 5010), str(proc))
    assert core._still_ours(100, (5000, 5000), str(proc))  # the bounds are in the window
    assert core._still_ours(100, (4990, 5000), str(proc))
    assert not core._still_ours(100, (4990, 4999), str(proc))  # a stranger's pid now: it started later
    assert not core._still_ours(100, (5001, 5010), str(proc))
    assert core._still_ours(100, 5000, str(proc)) and not core._still_ours(100, 4999, str(proc))  # one number
    assert core._still_ours(100, (0, 0), str(proc)) and core._still_ours(100, 0, str(proc))  # unknown
    assert core._still_ours(200, (1, 2), str(proc))  # the leader is gone: the number stays the group's


def test_kill_everything_kills_only_the_groups_whose_leader_is_in_its_window(tmp_path, monkeypatch):
    proc = tmp_path
    fake_stat(proc, 100, 5000)  # a leader in its window
    fake_stat(proc, 300, 9000)  # pid 300: a stranger, later than the window listed for it
    killed_groups: list[int] = []
    killed: list[int] = []
    monkeypatch.setattr(core.os, "killpg", lambda pgid, signum: killed_groups.append(pgid))
    monkeypatch.setattr(core, "kill", lambda p, signum=signal.SIGKILL, proc="/proc": killed.append(p.pid) or True)
    core.kill_everything("", [(100, (4999, 5001), "", ""), (200, (10, 20), "", ""), (300, (100, 200), "", "")],
                         None, str(proc))
    assert killed_groups == [100, 200]
    assert killed == [100]  # the members of the listed groups found in /proc: the stranger's are not
