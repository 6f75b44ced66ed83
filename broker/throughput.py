"""Tasks completed and failed over the last minutes, in buckets of ``BUCKET`` seconds.

What ``stats`` shows as throughput: the core counts each task as it finishes (``count``),
at the time its caller passed in, so a call of ``recent`` costs ``BUCKETS`` steps whatever
the number of tasks. Nothing here reads a clock or knows of tasks but their final status.
"""

from __future__ import annotations

from collections import deque

from common.models import TaskStatus

#: Seconds a bucket covers.
BUCKET = 10
#: Buckets kept: the last 15 minutes.
BUCKETS = 90


class Throughput:
    """Counts of tasks completed and failed by bucket, the last ``BUCKETS`` of them."""

    def __init__(self) -> None:
        #: (bucket number, completed, failed), oldest first; a bucket with no finish is
        #: absent.
        self._buckets: deque[list[int]] = deque()

    def count(self, status: TaskStatus, now: float) -> None:
        """A task finished with ``status`` at ``now`` (only completed and failed count)."""
        if status is TaskStatus.COMPLETED:
            column = 1
        elif status is TaskStatus.FAILED:
            column = 2
        else:
            return
        number = int(now // BUCKET)
        buckets = self._buckets
        if not buckets or buckets[-1][0] < number:
            buckets.append([number, 0, 0])
            if len(buckets) > BUCKETS:
                buckets.popleft()
        # (a clock that went back counts in the latest bucket)
        buckets[-1][column] += 1

    def recent(self, now: float) -> dict[str, object]:
        """The last ``BUCKETS`` buckets up to the one holding ``now``, oldest first:
        ``{"bucket": BUCKET, "completed": [n, ...], "failed": [n, ...]}``."""
        end = int(now // BUCKET)
        start = end - BUCKETS + 1
        completed = [0] * BUCKETS
        failed = [0] * BUCKETS
        for number, done, lost in self._buckets:
            if start <= number <= end:
                completed[number - start] = done
                failed[number - start] = lost
        return {"bucket": BUCKET, "completed": completed, "failed": failed}
