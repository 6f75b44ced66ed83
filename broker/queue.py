"""Ready queues: tasks that could run now, highest priority first, FIFO among equals.

Tasks are grouped by *shape* (handler, required tags, resources), one heap per
shape. Every task of a shape can run on exactly the same workers, so choosing
the next task for the cluster means comparing the heads of a few heaps, never
scanning all tasks. Removal is lazy: a cancelled task stays in its heap until
it reaches the top, where ``head`` discards it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from broker.state import Task
from common.models import TaskStatus

Shape = tuple[str, tuple[str, ...], tuple[tuple[str, float], ...]]
#: Heap entry: (-priority, seq, task); seq is unique so tasks are never compared.
Entry = tuple[int, int, Task]


class ReadyQueues:
    """One priority heap per task shape, with lazy deletion."""

    def __init__(self) -> None:
        self._heaps: dict[Shape, list[Entry]] = {}

    def push(self, task: Task) -> None:
        task.queued = True
        heap = self._heaps.get(task.shape)
        if heap is None:
            heap = self._heaps[task.shape] = []
        heapq.heappush(heap, (-task.priority, task.seq, task))

    def extend(self, tasks: Iterable[Task]) -> None:
        """Push many tasks at once (a restart): one heapify per shape, not a push per task."""
        heaps = self._heaps
        for task in tasks:
            task.queued = True
            entry = (-task.priority, task.seq, task)
            shape = (task.handler, task.requires, task.resources)
            heap = heaps.get(shape)
            if heap is None:
                heaps[shape] = [entry]
            else:
                heap.append(entry)
        for heap in heaps.values():
            heapq.heapify(heap)

    def drop(self, tasks: Iterable[Task]) -> None:
        """Remove every entry of these tasks' seqs, left in a heap by lazy deletion (the
        entry of a task cancelled, or of its copy that left memory for the store), before
        they are pushed again (a retry): one pass over each heap concerned."""
        by_shape: dict[Shape, set[int]] = {}
        for task in tasks:
            if task.shape in self._heaps:
                by_shape.setdefault(task.shape, set()).add(task.seq)
        for shape, seqs in by_shape.items():
            kept = []
            for entry in self._heaps[shape]:
                if entry[1] in seqs:
                    entry[2].queued = False
                else:
                    kept.append(entry)
            if kept:
                heapq.heapify(kept)
                self._heaps[shape] = kept
            else:
                del self._heaps[shape]

    def head(self, shape: Shape) -> Task | None:
        """The next task of this shape, discarding entries that are no longer ready."""
        heap = self._heaps.get(shape)
        while heap:
            task = heap[0][2]
            if task.queued and task.status is TaskStatus.PENDING:
                return task
            heapq.heappop(heap)
            task.queued = False
        if heap is not None:
            del self._heaps[shape]
        return None

    def pop(self, shape: Shape) -> Task:
        """Remove and return the head of this shape (call ``head`` first)."""
        task = heapq.heappop(self._heaps[shape])[2]
        task.queued = False
        return task

    def shapes(self) -> Iterator[Shape]:
        return iter(list(self._heaps))
