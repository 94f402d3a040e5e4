"""Who listens on a TCP port: Linux's /proc, read with the standard library alone.

Theory of operation
-------------------
A backend with a fixed port must not be told ready by a port that another process serves (issue #13):
its readiness probe would reach that other process while its own child dies with "address already in
use". Two questions answer that, both from /proc:

* Does anything listen on the port? `/proc/net/tcp` and `/proc/net/tcp6` list every TCP socket of this
  network namespace with its local address, its state (`0A` is LISTEN) and its socket inode; the sockets
  in LISTEN on the port, whatever their address (0.0.0.0, 127.0.0.1, ::, ::1, a NIC's), are
  `listening_inodes(port)`.
* Who holds such a socket? A process holds it when one of its `/proc/PID/fd/N` links reads
  `socket:[INODE]` (`owner`, `owned_by`; `group_pids` lists a process group's members from /proc/*/stat).

Nothing here raises for a process that vanishes mid-walk or whose /proc entries are closed to us (another
user's process when the daemon is not root, a non-dumpable one): it is skipped, and what that means is
said per function. Threads are not walked (/proc lists thread-group leaders, and threads share their
leader's descriptors).

Cost (the reason the async wrappers run them in a worker thread, never on the event loop), measured on a
2-core VM with 70 processes:

* `listening_inodes`: reads the two tables, ~1.3 ms each: the kernel walks its whole socket hash tables
  (sized by the machine's memory) to print them, so a big host pays more (tens of ms with tens of
  thousands of sockets) whatever the port; the parsing skips every line without the port at once.
* `owner`: that, then one readlink per open descriptor of every visible process, in pid order, until the
  holder is found (~3.7 ms here; a few thousand readlinks on a desktop: ~10-20 ms). Called once per start
  of a fixed-port backend.
* `group_pids`: one read of /proc/PID/stat per process (~0.7 ms here, ~10 us a process).
* `owned_by`: the tables, then one readlink per descriptor of the given processes (ComfyUI: a few
  hundred).
* `group_may_own` / `owned_by_group`: the tables, then the group leader's descriptors (the usual holder);
  the group walk only when the leader does not hold the socket (~3.5 ms here). Called after each readiness
  probe that succeeds -- and the probe backs off to one try a second -- never on a timer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import trio

#: The TCP tables of /proc (IPv4, IPv6); an IPv4-mapped listener on :: appears in tcp6 only.
TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
#: The `st` column of a socket in LISTEN state.
LISTEN = b"0A"
#: How much of an owner's command line a message shows.
COMMAND_MAX = 80


def listening_inodes(port: int) -> set[int]:
    """The inodes of the TCP sockets in LISTEN state on `port`, any local address, IPv4 and IPv6 (this
    network namespace). Empty when nothing listens there, or /proc/net cannot be read."""
    suffix = b":%04X" % port  # local_address is ADDR:PORT in upper-case hex, e.g. 0100007F:1F90
    inodes: set[int] = set()
    for table in TCP_TABLES:
        try:
            with open(table, "rb") as handle:
                data = handle.read()
        except OSError:  # no IPv6 in this kernel, or /proc not mounted
            continue
        for line in data.splitlines()[1:]:  # the first line is the header
            if suffix not in line:
                continue  # cheap filter: most sockets are not on this port
            # sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN or not fields[1].endswith(suffix):
                continue
            try:
                inode = int(fields[9])
            except ValueError:
                continue
            if inode:
                inodes.add(inode)
    return inodes


def owner(port: int) -> str | None:
    """None when nothing listens on `port`; else a message for a start that cannot have the port::

        port 8188 is in use by pid 1234 (python3 main.py --port 8188)
        port 8188 is in use (its owner is not visible to swarmd)

    The second when no process whose descriptors swarmd may read holds the socket: another user's process
    while the daemon is not root, a process in another PID namespace (a container's), or one that closed
    it meanwhile. Of several holders (a forking server), the lowest pid is named."""
    inodes = listening_inodes(port)
    if not inodes:
        return None
    links = _socket_links(inodes)
    for pid in _pids():
        if _holds(pid, links):
            return f"port {port} is in use by pid {pid} ({command_line(pid)})"
    return f"port {port} is in use (its owner is not visible to swarmd)"


def group_pids(pgid: int) -> list[int]:
    """The live processes (zombies left out) of process group `pgid`, in pid order; [] when none."""
    members = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so cut at the last ")"
        fields = stat[stat.rfind(b")") + 1:].split()
        if len(fields) < 3 or fields[0] in (b"Z", b"X"):
            continue
        try:
            if int(fields[2]) == pgid:
                members.append(pid)
        except ValueError:
            continue
    return members


def owned_by(port: int, pids: Iterable[int]) -> bool:
    """True when a socket listening on `port` is held by one of `pids` (read from their /proc/PID/fd).
    False when nothing listens there, or none of them (whose descriptors swarmd may read) holds it."""
    inodes = listening_inodes(port)
    if not inodes:
        return False
    links = _socket_links(inodes)
    return any(_holds(pid, links) for pid in pids)


def group_may_own(port: int, pgid: int) -> bool:
    """Whether what listens on `port` may be process group `pgid`'s -- the readiness probe's question:
    False only when it is provably someone else's.

    * True when a process of the group holds a socket listening on `port` (its leader, pid `pgid`, is
      looked at first: the usual holder; the other members only when it does not hold it).
    * False when sockets listen on `port` and the group's processes, all readable, hold none of them: the
      probe reached another process (or a not-yet-listening backend's port was taken by another one).
    * True when it cannot tell: nothing listens on `port` on this machine (the probe reached another host,
      or the listener has just closed), or a member's descriptors cannot be read (a non-dumpable process).
    """
    inodes = listening_inodes(port)
    if not inodes:
        return True
    links = _socket_links(inodes)
    held = _holds(pgid, links)
    if held:
        return True
    unknown = held is None
    for pid in group_pids(pgid):
        if pid == pgid:
            continue
        held = _holds(pid, links)
        if held:
            return True
        unknown = unknown or held is None
    return unknown


# -- async wrappers: the walks run in a worker thread, abandoned when cancelled (they change nothing) ----------


async def find_owner(port: int) -> str | None:
    """`owner(port)` in a worker thread: before a fixed-port start."""
    return await trio.to_thread.run_sync(owner, port, abandon_on_cancel=True)


async def owned_by_group(port: int, pgid: int) -> bool:
    """`group_may_own(port, pgid)` in a worker thread: after a readiness probe that succeeded."""
    return await trio.to_thread.run_sync(group_may_own, port, pgid, abandon_on_cancel=True)


# -- helpers ------------------------------------------------------------------------------------------------


def command_line(pid: int) -> str:
    """The command line of `pid`, arguments joined by spaces, shortened to COMMAND_MAX characters; its
    `[comm]` when the command line is empty (a kernel thread, a zombie); "?" when it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read(4096)
    except OSError:
        raw = b""
    text = " ".join(arg.decode(errors="replace") for arg in raw.split(b"\0") if arg)
    if not text:
        try:
            with open(f"/proc/{pid}/comm", "rb") as handle:
                text = f"[{handle.read().decode(errors='replace').strip()}]"
        except OSError:
            return "?"
    text = "".join(char if char.isprintable() else "?" for char in text)
    return text if len(text) <= COMMAND_MAX else text[:COMMAND_MAX - 3] + "..."


def _socket_links(inodes: Iterable[int]) -> frozenset[str]:
    """What /proc/PID/fd/N reads for each socket."""
    return frozenset(f"socket:[{inode}]" for inode in inodes)


def _pids() -> Iterator[int]:
    """The visible processes (thread-group leaders), in pid order."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return iter(())
    return iter(sorted(int(name) for name in names if name.isdigit()))


def _holds(pid: int, links: frozenset[str]) -> bool | None:
    """Whether `pid` has a descriptor open on one of the sockets `links`; None when its descriptors cannot
    be read (another user's process, a non-dumpable one), False when it is gone."""
    try:
        directory = os.open(f"/proc/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError:
        return None
    except OSError:
        return False
    try:
        try:
            names = os.listdir(directory)
        except PermissionError:
            return None
        except OSError:
            return False
        for name in names:
            try:
                if os.readlink(name, dir_fd=directory) in links:
                    return True
            except OSError:  # closed meanwhile, or the process is gone
                continue
        return False
    finally:
        os.close(directory)
