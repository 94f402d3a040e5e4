"""Writing: `atomic_write()` puts a fsynced temp file in place of the file, as a compare-and-swap under the
write lock (renameat2 RENAME_EXCHANGE: `_swap_in`, `Conflict`); `_remove_stale_temps` removes what an
interrupted write left."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import stat
import tempfile
import time

from swarmd.backends_file.lock import _write_lock
from swarmd.backends_file.model import digest_of

log = logging.getLogger("swarmd.backends_file")  # one logger for the whole package


class Conflict(Exception):
    """The file changed on disk after it was last read: the write was not made (theirs is kept)."""


_TEMP_SUFFIX = ".swarmd-tmp"
#: A temp file whose writer is alive is left alone this long (a write waits for the lock seconds at most).
_STALE_AFTER = 60.0


def atomic_write(path: str, text: str, expect_digest: str | None = None, *, lock_timeout: float = 5.0) -> None:
    """Replace the file at `path` with `text`, atomically and durably.

    A symlink at `path` is kept: its target is replaced. The old mode and owner are kept (new files get
    0644 under the umask). With `expect_digest`, the write is a compare-and-swap made under the write lock
    (`<real path>.lock`, waited for `lock_timeout` seconds at most): when the file no longer has that
    content (a person saved it meanwhile), it is left as they saved it and `Conflict` is raised; a file
    that has disappeared is created again. Raises OSError (LockTimeout among them), Conflict; on failure
    the old file is untouched and no temp file is left.
    """
    _write_bytes(path, text.encode("utf-8"), expect_digest, lock_timeout)


def _write_bytes(path: str, data: bytes, expect: bytes | str | None, lock_timeout: float) -> None:
    """`atomic_write` of `data`; `expect` is what the file must still hold for the write to go ahead: its
    bytes, or their digest (None: no check). Comparing bytes costs nothing; hashing a 3 MB file costs
    milliseconds, at every write."""
    target = os.path.realpath(path)
    directory = os.path.dirname(target) or "."
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    if old is not None and (not os.access(target, os.W_OK) or not old.st_mode & 0o222):
        # os.replace would succeed in a writable directory even though the file itself is read-only (and
        # root may write anything): a person who made the file read-only meant "do not change it".
        raise PermissionError(errno.EACCES, "Permission denied (the file is read-only)", path)
    mode = stat.S_IMODE(old.st_mode) if old is not None else 0o644 & ~_umask()
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.{os.getpid()}-", suffix=_TEMP_SUFFIX,
                                dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if old is not None and (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                try:
                    os.fchown(handle.fileno(), old.st_uid, old.st_gid)
                except PermissionError:
                    pass  # not root: the file becomes ours, as any editor's save would
            os.fsync(handle.fileno())
        if expect is None:
            os.replace(temp, target)
        else:
            owner = (old.st_uid, old.st_gid) if old is not None else None
            with _write_lock(target, mode, owner, lock_timeout):
                try:
                    _swap_in(temp, target, expect)
                except FileNotFoundError:
                    _create(temp, target)  # deleted meanwhile: the write creates it again
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    """The process umask, read without setting it (os.umask would change it for every thread a moment)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _holds(data: bytes, expect: bytes | str) -> bool:
    """Whether `data` is what `expect` says: those bytes, or bytes of that digest."""
    return data == expect if isinstance(expect, bytes) else digest_of(data) == expect


def _swap_in(temp: str, target: str, expect: bytes | str) -> None:
    """Put `temp` in place of `target` only if `target` still holds `expect` (bytes, or their digest).

    renameat2(RENAME_EXCHANGE) swaps the two names atomically, so what we displaced is at hand: if it is
    not what we expected, a person saved the file a moment ago and we swap their version straight back.
    (A check followed by a plain rename would leave a window where their save is silently replaced.)
    Filesystems without RENAME_EXCHANGE get the check-then-rename fallback. Raises FileNotFoundError when
    `target` is gone.
    """
    try:
        _renameat2(temp, target, _RENAME_EXCHANGE)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        with open(target, "rb") as handle:
            if not _holds(handle.read(), expect):
                raise Conflict(target) from None
        os.replace(temp, target)
        return
    with open(temp, "rb") as handle:
        displaced = handle.read()
    if not _holds(displaced, expect):
        _renameat2(temp, target, _RENAME_EXCHANGE)  # theirs back in place; ours is removed by the caller
        raise Conflict(target)
    os.unlink(temp)


def _create(temp: str, target: str) -> None:
    """Put `temp` at `target`, which must not exist (Conflict when it appeared meanwhile)."""
    try:
        _renameat2(temp, target, _RENAME_NOREPLACE)
    except FileExistsError:
        raise Conflict(target) from None
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        if os.path.lexists(target):
            raise Conflict(target) from None
        os.replace(temp, target)


_libc = None
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _renameat2(a: str, b: str, flags: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(_libc, "renameat2"):
        raise OSError(errno.ENOSYS, "renameat2 not available")
    at_fdcwd = -100
    if _libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), b)


def _remove_stale_temps(target: str) -> None:
    """Remove the temp files of `target` (`.<name>.<pid>-<random>.swarmd-tmp`) that a killed writer left:
    those whose writer is gone, or that are older than a minute. Only regular files; links are not
    followed. One log line per removal; a failure is logged, never raised."""
    directory, name = os.path.split(target)
    pattern = re.compile(rf"\.{re.escape(name)}\.(?:([0-9]+)-)?[^/]+{re.escape(_TEMP_SUFFIX)}")
    try:
        candidates = [entry for entry in os.scandir(directory or ".") if pattern.fullmatch(entry.name)]
    except OSError:
        return
    now = time.time()
    for entry in candidates:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        match = pattern.fullmatch(entry.name)
        writer = int(match.group(1)) if match and match.group(1) else None
        if _alive(writer) and now - info.st_mtime < _STALE_AFTER:
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as err:
            log.warning("cannot remove %s, left by an interrupted write: %s", entry.path, err.strerror)
            continue
        log.warning("removed %s, a temp file left by an interrupted write", entry.path)


def _alive(pid: int | None) -> bool:
    """Whether process `pid` may still be writing (None: unknown, so yes)."""
    if pid is None or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True
