"""The write lock: the file `<real path of the backends file>.lock` (`lock_path_of`), which only those who
may write the backends file can open, held with flock and waited for a bounded time (`LockTimeout`)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterator

log = logging.getLogger("swarmd.backends_file")  # one logger for the whole package


class LockTimeout(OSError):
    """The write lock could not be taken within the deadline: another program is changing the file."""

    def __init__(self, lock_path: str, timeout: float) -> None:
        super().__init__(f"cannot lock {lock_path} within {timeout:g} s: another program is changing the "
                         "backends file; nothing was changed. Try again.")
        self.lock_path = lock_path
        self.timeout = timeout


def lock_path_of(path: str) -> str:
    """The write lock of the backends file at `path`: `<real path>.lock`."""
    return os.path.realpath(path) + ".lock"


def _lock_mode(file_mode: int) -> int:
    """rw for each of user, group, other that may write the backends file; nothing for the others."""
    mode = 0
    for write_bit, read_write in ((stat.S_IWUSR, 0o600), (stat.S_IWGRP, 0o060), (stat.S_IWOTH, 0o006)):
        if file_mode & write_bit:
            mode |= read_write
    return mode


@contextlib.contextmanager
def _write_lock(target: str, file_mode: int, owner: tuple[int, int] | None, timeout: float) -> Iterator[None]:
    """Hold the write lock of `target` (an exclusive flock on `<target>.lock`), waiting `timeout` seconds
    at most: raises LockTimeout after that. Never blocks in the kernel, so a stopping daemon never hangs
    on a lock someone holds."""
    lock_path = target + ".lock"
    fd = _open_lock_file(lock_path, _lock_mode(file_mode), owner)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LockTimeout(lock_path, timeout) from None
                time.sleep(min(0.015, left))
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def _prepare_lock(path: str) -> None:
    """Create (or narrow) the write lock of an existing backends file at start, so that a config tool's
    `flock` never creates it first with its own, wider mode. Best effort: a directory swarmd may not write
    in only means that writes will fail, with their own clear error."""
    target = os.path.realpath(path)
    try:
        info = os.stat(target)
        fd = _open_lock_file(target + ".lock", _lock_mode(info.st_mode), (info.st_uid, info.st_gid))
    except OSError as err:
        log.debug("cannot prepare the write lock of %s: %s", path, err)
        return
    os.close(fd)


def _open_lock_file(lock_path: str, mode: int, owner: tuple[int, int] | None) -> int:
    """Open (or create) the lock file so that only who may write the backends file can open it."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    root = os.geteuid() == 0
    for _ in range(10):
        try:
            fd = os.open(lock_path, flags | os.O_CREAT | os.O_EXCL, mode)
            created = True
        except FileExistsError:
            try:
                fd = os.open(lock_path, flags)
            except FileNotFoundError:
                continue  # removed between the two opens
            except OSError as err:
                if err.errno == errno.ELOOP:
                    raise OSError(errno.ELOOP, "the write lock is a symbolic link: refusing to use it "
                                  "(remove it; swarmd creates it as a plain file)", lock_path) from None
                raise
            created = False
        break
    else:
        raise OSError(errno.EAGAIN, "the write lock keeps disappearing", lock_path)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise OSError(errno.EINVAL, "the write lock is not a plain file with one link: refusing to use "
                          "it (remove it)", lock_path)
        if root and owner is not None and (info.st_uid, info.st_gid) != owner:
            with contextlib.suppress(PermissionError):  # (root squashed on NFS, say)
                os.fchown(fd, *owner)
        if created:
            os.fchmod(fd, mode)  # exactly, whatever the umask
        elif stat.S_IMODE(info.st_mode) & ~mode and (root or info.st_uid == os.geteuid()):
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & mode)  # made by someone else (flock(1)): narrow it
    except BaseException:
        os.close(fd)
        raise
    return fd
