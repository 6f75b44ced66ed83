"""An exclusive lock on a store, held by one process for as long as it has the store open.

Two brokers on one store would each load it, schedule the same tasks and overwrite each
other's commits. A backend whose state lives in a file takes this lock beside it before
it reads anything: ``flock`` on ``<path>.lock``, which holds the holder's pid so that a
refused broker can say who has the store. The kernel drops the lock when the holder's
process ends, however it ends (``kill -9`` included), so a file left behind never stops
the next start. This module must never delete the file: a broker starting while another
deletes it would lock a file that is no longer the one the next broker opens.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from broker.store import StoreInUse

#: What is added to a store's path to name its lock file.
SUFFIX = ".lock"


class StoreLock:
    """The lock on one store, held from ``acquire`` until ``release`` or the process's end."""

    def __init__(self, path: str, fd: int) -> None:
        #: The lock file's path.
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Give the lock up (a second call does nothing)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor of the file releases its flock
            self._fd = None


def acquire(store_path: str) -> StoreLock:
    """Lock the store at ``store_path`` for this process, or raise ``StoreInUse`` at once,
    naming the holder's pid and the lock file, when another holds it."""
    path = store_path + SUFFIX
    # O_CLOEXEC (Python's default): a process this one starts does not hold the lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f"pid {holder}" if holder.isdigit() else "another process"
        raise StoreInUse(
            f"{store_path} is in use by {who}, which holds its lock {path}; "
            "a store serves one broker at a time"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return StoreLock(path, fd)
