"""The committer thread: batches commit in order, merged, and a failure stops everything."""

from __future__ import annotations

import select
import threading
from collections.abc import Sequence

from broker.committer import Committer
from broker.core import Scheduler
from broker.store import Batch, MemoryStore, prepare


class SlowStore(MemoryStore):
    """Holds each write until the test lets it go, to see batches queue up and merge."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.writes: list[int] = []

    def write(self, batches: Sequence[Batch]) -> None:
        self.gate.wait(10)
        self.writes.append(len(batches))
        super().write(batches)


def batch_of(core: Scheduler, count: int) -> Batch:
    core.submit([{"handler": "echo"} for _ in range(count)], 1.0)
    return prepare(core.take_dirty())


def test_batches_commit_in_order_and_merge_while_a_commit_runs() -> None:
    store = SlowStore()
    committer = Committer(store)
    core = Scheduler()
    try:
        first = committer.submit(batch_of(core, 1))
        assert not committer.wait(first, timeout=0.2)  # the first write is held at the gate
        later = [committer.submit(batch_of(core, 2)) for _ in range(3)]
        store.gate.set()
        assert committer.wait(later[-1], timeout=10)
        assert select.select([committer.fileno()], [], [], 10)[0]
        assert committer.committed() == later[-1] == 4
        assert sum(store.writes) == 4
        assert store.writes[0] == 1  # the later three waited and went in together
        assert len(store.rows) == 7
    finally:
        store.gate.set()
        committer.close()


def test_a_failed_commit_is_reported_and_stops_the_committer() -> None:
    class BrokenStore(MemoryStore):
        def write(self, batches: Sequence[Batch]) -> None:
            raise OSError("disk full")

    committer = Committer(BrokenStore())
    try:
        number = committer.submit(batch_of(Scheduler(), 1))
        assert committer.wait(number, timeout=10)
        assert isinstance(committer.error, OSError)
        assert committer.committed() == 0
    finally:
        committer.close()


def test_close_commits_what_is_queued() -> None:
    store = MemoryStore()
    committer = Committer(store)
    core = Scheduler()
    for _ in range(5):
        committer.submit(batch_of(core, 3))
    committer.close()
    assert len(store.rows) == 15
