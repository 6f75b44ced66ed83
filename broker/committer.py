"""Group commit on a background thread: the loop keeps working while SQLite fsyncs.

The loop hands each turn's ``Batch`` to ``Committer.submit`` and holds back that
turn's replies; the committer thread writes every batch waiting for it in one
transaction (one fsync for all of them) and reports the highest batch number it
committed. The loop then sends what it held for those batches. Batches commit in
the order they were submitted. The sqlite3 module releases the GIL while SQLite
works, so the loop decodes and schedules the next messages meanwhile.

A failed commit is fatal: ``error`` is set and the loop must stop, because nothing
after it may be acknowledged. This module never touches sockets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

from broker.store import Batch, Store

log = logging.getLogger(__name__)


class Committer:
    """A thread that commits batches in order; ``fileno`` becomes readable after each commit."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._queue: list[Batch] = []
        self._submitted = 0
        self._committed = 0
        self._closing = False
        #: The exception that stopped the committer, if any.
        self.error: BaseException | None = None
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self._thread.start()

    def fileno(self) -> int:
        """A file descriptor to poll: readable when batches were committed (or on error)."""
        return self._wake_read

    def submit(self, batch: Batch) -> int:
        """Queue a batch; returns its number, to compare with ``committed``."""
        with self._cond:
            self._submitted += 1
            self._queue.append(batch)
            self._cond.notify()
            return self._submitted

    @property
    def submitted(self) -> int:
        return self._submitted

    def committed(self) -> int:
        """The number of the last batch committed so far (clears the readable state)."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 4096):
                pass
        with self._cond:
            return self._committed

    def wait(self, number: int, timeout: float | None = None) -> bool:
        """Block until batch ``number`` is committed (or the committer failed)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._committed >= number or self.error is not None, timeout
            )

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._closing)
                if not self._queue:
                    return
                batches, self._queue = self._queue, []
                last = self._submitted
            try:
                self._store.write(batches)
            except BaseException as exc:
                log.critical("commit failed; nothing more can be acknowledged: %s", exc)
                with self._cond:
                    self.error = exc
                    self._cond.notify_all()
                self._wake()
                return
            with self._cond:
                self._committed = last
                self._cond.notify_all()
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: the loop is due to look anyway
            os.write(self._wake_write, b"\0")
