"""Chaos monkeys: a mixed workload runs while workers die, the broker restarts, a worker freezes.

The workload is ``ZMQS_CHAOS_TASKS`` tasks (300 by default, so that ``make test`` stays
quick; ``make chaos`` runs 5000) of ``echo``, ``fibonacci``, ``sleep``, ``fail_times`` and
``always_fail``, with random priorities, some with dependencies, each with its own
idempotency key. It is submitted in paced batches, so the chaos strikes while tasks are
both arriving and running; a batch the broker did not answer is sent again with the same
keys. Once every task is final, every task is checked against the delivery guarantees
(docs/guarantees.md): final, one recorded outcome, the right result, dependencies
respected, one task per key.

``ZMQS_CHAOS_SEED`` replays a workload (the seed is printed; the chaos's timing is not
replayable). Each scenario prints its figures: run with ``-s`` to see them.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker.core import MAX_LOST
from common.client import Client
from common.errors import Unavailable
from tests.conftest import Proc, Stack, wait_for

#: Tasks per scenario; ``make chaos`` sets 5000.
CHAOS_TASKS = int(os.environ.get("ZMQS_CHAOS_TASKS", "300"))
#: The workload goes out in this many batches, paced, so it keeps arriving during the chaos.
BATCHES = 30
#: Pause between two batches, in seconds (random in this range).
BATCH_PAUSE = (0.05, 0.25)
#: Longest wait for the whole workload to be final: generous, the machine is shared.
FINAL_WITHIN = 90.0 + CHAOS_TASKS * 0.06
#: Longest time, and most tries, a submit may keep failing before the test gives up.
SUBMIT_WITHIN = 60.0
SUBMIT_ATTEMPTS = 100
#: Per-request broker timeout of the API in the restart scenario: a submit that meets a
#: dead broker answers 503 after this long and is sent again.
API_REQUEST_TIMEOUT = 2.0
#: Broker restarts in ``test_broker_restarts``.
RESTARTS = 5
#: Workers in the first two scenarios (the worker monkey keeps their number constant).
WORKERS = 3
#: Statuses a task ends in.
FINAL = frozenset({"completed", "failed", "cancelled"})
#: Lease outcomes that mean the run was cut short by the chaos, not by its handler.
INTERRUPTED = frozenset({"lost", "released", "expired"})

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(int(2 * FINAL_WITHIN + 120))]


# -- the workload -----------------------------------------------------------------------


def fib(n: int) -> int:
    """F(n) the slow, obvious way: a check independent of the worker's fast doubling."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


@dataclass
class Planned:
    """One task of the workload: what to submit and what its result must be."""

    index: int
    key: str
    handler: str
    args: bytes
    priority: int
    max_retries: int
    #: Indices of earlier tasks (always in an earlier batch: their ids are known by then).
    depends_on: list[int]
    #: Submitted one by one through ``POST /tasks`` rather than in a batch of the client.
    via_http: bool = False
    #: The exact result, when it is known in advance (echo, fibonacci, sleep).
    expected: bytes | None = None

    def spec(self, ids: list[str]) -> dict[str, Any]:
        return {
            "handler": self.handler,
            "args": self.args,
            "priority": self.priority,
            "max_retries": self.max_retries,
            "dependencies": [ids[i] for i in self.depends_on],
            "idempotency_key": self.key,
        }


def plan_workload(
    n: int, rng: random.Random, counters: Path, http_share: float = 0.0
) -> list[Planned]:
    """``n`` tasks: roughly 35 % echo, 30 % fibonacci, 18 % sleep, 15 % fail_times (fails its
    first run, then succeeds), 2 % always_fail (so that some dependencies really fail);
    one in ten depends on 1–3 tasks of the two batches before its own."""
    size = batch_size(n)
    plan: list[Planned] = []
    for i in range(n):
        key = f"chaos-{i}-{rng.getrandbits(32):08x}"
        roll = rng.random()
        retries = 0
        expected: bytes | None
        if roll < 0.35:
            handler, args = "echo", rng.randbytes(rng.randint(1, 64))
            expected = args
        elif roll < 0.65:
            k = rng.randint(0, 500)
            handler, args = "fibonacci", json.dumps({"n": k}).encode()
            expected = b'{"n":%d,"result":%d}' % (k, fib(k))
        elif roll < 0.83:
            seconds = round(rng.uniform(0.01, 0.2), 3)
            handler, args = "sleep", json.dumps({"seconds": seconds}).encode()
            expected = json.dumps({"slept": seconds}, separators=(",", ":")).encode()
        elif roll < 0.98:
            # fail=1 with 3 retries: one planned failure, and room for a run cut short by a
            # kill after it bumped the shared counter. A completed run has seen >= 2 runs.
            # Failing with retries exhausted stays possible (a kill between the counter's
            # truncate and write leaves it empty, and later runs cannot parse it): the check
            # accepts that when the leases show max_retries + 1 failed runs.
            spec = {"path": str(counters / key), "fail": 1}
            handler, args, retries, expected = "fail_times", json.dumps(spec).encode(), 3, None
        else:
            handler, args, retries, expected = "always_fail", b"", 1, None
        batch_start = i - i % size
        depends_on: list[int] = []
        if batch_start > 0 and rng.random() < 0.1:
            pool = range(max(0, batch_start - 2 * size), batch_start)
            depends_on = sorted(rng.sample(pool, min(len(pool), rng.randint(1, 3))))
        plan.append(
            Planned(
                index=i,
                key=key,
                handler=handler,
                args=args,
                priority=rng.randint(-5, 5),
                max_retries=retries,
                depends_on=depends_on,
                via_http=rng.random() < http_share,
                expected=expected,
            )
        )
    return plan


def batch_size(n: int) -> int:
    return max(1, math.ceil(n / BATCHES))


@dataclass
class Figures:
    """What a scenario did, printed at its end for the record."""

    scenario: str
    seed: int
    #: What the monkey kills: "worker" or "broker" (each kill is followed by a start).
    victim: str
    tasks: int = 0
    kills: int = 0
    restarts: int = 0
    elapsed: float = 0.0
    #: Batches sent again after ``Unavailable``, and HTTP submits sent again after a 503
    #: or a broken connection.
    submit_retries: int = 0
    http_retries: int = 0
    #: Submits answered "already there" (``created`` false, or HTTP 200): a retry whose
    #: first try had reached the broker.
    deduplicated: int = 0
    #: ``stale_outcomes`` of the last broker's ``/health`` (it counts from its start).
    stale_outcomes: int = 0
    #: Leases whose worker's outcome came after the lease ended (stored with the task).
    refused_leases: int = 0
    #: Tasks with more than one lease, and those of them re-run because a run was cut
    #: short (lost, released, expired) rather than because its handler failed.
    multi_lease_tasks: int = 0
    rerun_tasks: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)

    def report(self) -> str:
        return (
            f"\n[chaos] {self.scenario}: seed={self.seed} tasks={self.tasks} "
            f"{self.victim}_kills={self.kills} {self.victim}_starts={self.restarts} "
            f"elapsed={self.elapsed:.1f}s "
            f"submit_retries={self.submit_retries} http_retries={self.http_retries} "
            f"deduplicated={self.deduplicated} stale_outcomes={self.stale_outcomes} "
            f"refused_leases={self.refused_leases} multi_lease_tasks={self.multi_lease_tasks} "
            f"rerun_tasks={self.rerun_tasks} statuses={dict(self.statuses)} "
            f"failures={dict(self.failures)}"
        )


class Workload:
    """Submits a plan in paced batches, sending again whatever the broker did not answer."""

    def __init__(self, plan: list[Planned], figures: Figures) -> None:
        self.plan = plan
        self.figures = figures
        self.ids: list[str] = [""] * len(plan)
        #: Tasks acknowledged so far; read by the restart monkey from its thread.
        self.acknowledged = 0

    def submit(self, client: Client, rng: random.Random, api: Stack | None = None) -> None:
        size = batch_size(len(self.plan))
        for start in range(0, len(self.plan), size):
            batch = self.plan[start : start + size]
            direct = [p for p in batch if not p.via_http]
            if direct:
                for planned, task_id in zip(
                    direct, self._submit_batch(client, direct), strict=True
                ):
                    self.ids[planned.index] = task_id
            for planned in batch:
                if planned.via_http:
                    assert api is not None
                    self.ids[planned.index] = self._submit_http(api, planned)
            self.acknowledged = start + len(batch)
            time.sleep(rng.uniform(*BATCH_PAUSE))  # pacing, not synchronisation

    def _submit_batch(self, client: Client, batch: list[Planned]) -> list[str]:
        # Built once: a retry must send the very same specs, keys included.
        specs = [planned.spec(self.ids) for planned in batch]
        deadline = time.monotonic() + SUBMIT_WITHIN
        for _ in range(SUBMIT_ATTEMPTS):
            try:
                entries = client.submit_entries(specs, timeout=5.0)
                break
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                self.figures.submit_retries += 1
        else:
            raise AssertionError(f"no answer to a submit after {SUBMIT_ATTEMPTS} tries")
        assert len(entries) == len(specs)
        self.figures.deduplicated += sum(1 for entry in entries if not entry["created"])
        return [str(entry["id"]) for entry in entries]

    def _submit_http(self, api: Stack, planned: Planned) -> str:
        spec = planned.spec(self.ids)
        body = {**spec, "args": base64.b64encode(planned.args).decode("ascii")}
        deadline = time.monotonic() + SUBMIT_WITHIN
        retried = False
        for _ in range(SUBMIT_ATTEMPTS):
            try:
                status, got, _ = api.http("POST", "/tasks", body)
            except (OSError, http.client.HTTPException):  # refused, reset, timed out
                status, got = 0, None
            if status in (200, 201):
                break
            assert status in (0, 503), (status, got)
            assert time.monotonic() < deadline, f"POST /tasks kept failing: {status} {got}"
            self.figures.http_retries += 1
            retried = True
            time.sleep(0.1)  # the API is up; do not spin on a refused connection
        else:
            raise AssertionError(f"no answer to POST /tasks after {SUBMIT_ATTEMPTS} tries")
        assert isinstance(got, dict)
        # 200 means the key was known: only a retry may meet its own earlier try.
        assert status == 201 or retried, f"first POST of a fresh key answered {status}"
        if status == 200:
            self.figures.deduplicated += 1
        return str(got["id"])


def wait_all_final(client: Client, n: int, within: float) -> dict[str, Any]:
    """Poll ``/health`` until the broker holds ``n`` tasks, none pending or running."""

    def all_final() -> dict[str, Any] | None:
        health = client.health(timeout=2.0)  # Unavailable during a restart: wait_for retries
        counts = health["tasks"]
        done = counts["pending"] + counts["running"] == 0 and sum(counts.values()) >= n
        return health if done else None

    return wait_for(all_final, timeout=within, interval=0.2, what=f"{n} tasks final")


def list_all(client: Client, n: int) -> list[dict[str, Any]]:
    """Every task, paging through ``list`` 1000 at a time."""
    tasks: list[dict[str, Any]] = []
    after: int | None = None
    for _ in range(n // 1000 + 10):
        page, after = client.list_tasks(limit=1000, after=after, timeout=30.0)
        tasks.extend(page)
        if after is None:
            return tasks
    raise AssertionError(f"listing did not end after {len(tasks)} tasks")


# -- the guarantees -------------------------------------------------------------------------


def check_guarantees(workload: Workload, tasks: list[dict[str, Any]], figures: Figures) -> None:
    """Assert every guarantee on every task (collecting all problems first, so that one
    failure shows the whole picture), and fill in the figures."""
    plan, n = workload.plan, len(workload.plan)
    problems: list[str] = []

    # 5. Idempotency: one task per key, and it is the task the submit acknowledged.
    by_key = {task["idempotency_key"]: task["id"] for task in tasks}
    assert len(tasks) == n, f"{len(tasks)} tasks for {n} submitted"
    assert len({task["id"] for task in tasks}) == n
    assert len(by_key) == n, "two tasks share an idempotency key"
    for planned in plan:
        if by_key.get(planned.key) != workload.ids[planned.index]:
            problems.append(
                f"key {planned.key}: acknowledged as {workload.ids[planned.index]}, "
                f"stored as {by_key.get(planned.key)}"
            )
    by_id = {task["id"]: task for task in tasks}

    for planned in plan:
        task = by_id.get(workload.ids[planned.index])
        if task is None:
            continue  # reported above
        where = f"task {task['id']} ({planned.handler} #{planned.index})"
        status, leases = task["status"], task["leases"]
        figures.statuses[status] += 1
        outcomes = [lease["outcome"] for lease in leases]

        # 1. Final.
        if status not in FINAL:
            problems.append(f"{where}: still {status}")
            continue

        # 2. One outcome: a closed, numbered lease per run; a completed one only on the last
        # lease of a completed task.
        if [lease["attempt"] for lease in leases] != list(range(1, task["attempts"] + 1)):
            problems.append(f"{where}: attempts {task['attempts']}, leases {leases}")
        if any(lease["outcome"] is None or lease["ended_at"] is None for lease in leases):
            problems.append(f"{where}: {status} with an open lease: {leases}")
        completed_leases = outcomes.count("completed")
        if status == "completed":
            if completed_leases != 1 or outcomes[-1] != "completed":
                problems.append(f"{where}: completed, lease outcomes {outcomes}")
            elif leases[-1]["worker_id"] != task["worker_id"]:
                problems.append(f"{where}: completed by {task['worker_id']}, lease {leases[-1]}")
        elif completed_leases:
            problems.append(f"{where}: {status} yet a lease completed: {outcomes}")
        if outcomes.count("lost") > MAX_LOST + 1:
            problems.append(f"{where}: lost {outcomes.count('lost')} times")
        handler_failures = sum(1 for outcome in outcomes if outcome in ("failed", "expired"))
        if handler_failures > planned.max_retries + 1:
            problems.append(
                f"{where}: {handler_failures} failed runs, {planned.max_retries} retries"
            )

        # 3. The right result, or a failure the workload explains.
        if status == "completed":
            problem = result_problem(planned, task["result"])
            if problem:
                problems.append(f"{where}: {problem}")
        else:
            error = str(task["error"] or "")
            kind = "dependency" if error_says_dependency(task) else error.split(":")[0]
            figures.failures[f"{planned.handler}: {kind}"] += 1
            if status == "cancelled":
                problems.append(f"{where}: cancelled, and nobody cancelled it")
            elif error == "worker lost":
                if outcomes.count("lost") != MAX_LOST + 1:
                    problems.append(f"{where}: 'worker lost' after leases {outcomes}")
            elif error.startswith("dependency"):
                pass  # checked with the dependencies below
            elif planned.handler in ("fail_times", "always_fail"):
                # Retries exhausted: the last of max_retries + 1 failed runs decided it.
                if handler_failures != planned.max_retries + 1 or outcomes[-1] != "failed":
                    problems.append(f"{where}: failed ({error}) after leases {outcomes}")
            else:
                problems.append(f"{where}: failed: {error}")

        # 4. Dependencies: no run before they all completed; none at all if one did not.
        deps = [by_id.get(workload.ids[i]) for i in planned.depends_on]
        if planned.depends_on and (
            task["dependencies"] != [workload.ids[i] for i in planned.depends_on]
        ):
            problems.append(f"{where}: dependencies {task['dependencies']}")
        if all(dep is not None and dep["status"] == "completed" for dep in deps):
            ready_at = max((dep["completed_at"] for dep in deps if dep), default=0.0)
            early = [lease for lease in leases if lease["started_at"] < ready_at]
            if early:
                problems.append(f"{where}: ran before its dependencies completed: {early}")
            if error_says_dependency(task):
                problems.append(f"{where}: failed for a dependency that completed: {task['error']}")
        elif status != "failed" or leases or not error_says_dependency(task):
            problems.append(
                f"{where}: {status} with leases {outcomes} after a dependency did not complete"
            )

        # Figures: the traces the chaos left.
        figures.refused_leases += sum(1 for lease in leases if lease["refused"] is not None)
        figures.multi_lease_tasks += len(leases) > 1
        figures.rerun_tasks += any(outcome in INTERRUPTED for outcome in outcomes)

    figures.tasks = n
    assert not problems, f"{len(problems)} problems, first ones:\n" + "\n".join(problems[:25])


def error_says_dependency(task: dict[str, Any]) -> bool:
    return str(task["error"] or "").startswith("dependency ")


def result_problem(planned: Planned, result: bytes | None) -> str | None:
    if planned.expected is not None:
        return None if result == planned.expected else f"result {result!r}"
    if planned.handler == "fail_times":
        # Its first run always fails, so a success is the second run or a later one.
        runs = json.loads(result or b"null")
        return None if isinstance(runs, dict) and runs.get("runs", 0) >= 2 else f"result {runs}"
    return f"{planned.handler} completed with {result!r}"


def check_idempotent_resubmit(workload: Workload, client: Client, api: Stack | None) -> None:
    """Sending a batch again after the fact creates nothing: every key returns its task."""
    size = batch_size(len(workload.plan))
    first = [p for p in workload.plan[:size] if not p.via_http]
    if first:
        entries = client.submit_entries([p.spec(workload.ids) for p in first], timeout=10.0)
        assert [e["id"] for e in entries] == [workload.ids[p.index] for p in first]
        assert not any(e["created"] for e in entries)
    for planned in [p for p in workload.plan if p.via_http][:20]:
        assert api is not None
        body = {
            **planned.spec(workload.ids),
            "args": base64.b64encode(planned.args).decode("ascii"),
        }
        status, got, _ = api.http("POST", "/tasks", body)
        assert (status, got["id"]) == (200, workload.ids[planned.index])


# -- the counts ------------------------------------------------------------------------------
#
# What the figures must be, given what the scenario did (none cancels a task or gives one a
# timeout, so no lease is ever "cancelled" or "expired").


def check_counts(workload: Workload, tasks: list[dict[str, Any]], figures: Figures) -> None:
    """Bounds that hold in every scenario, from the workload's own design."""
    plan_of = {workload.ids[p.index]: p for p in workload.plan}
    outcomes = Counter(lease["outcome"] for task in tasks for lease in task["leases"])
    assert not outcomes.keys() & {"cancelled", "expired"}, (
        f"nobody cancels, no timeouts: {outcomes}"
    )

    # A task has more than one lease exactly when a run before its last failed, or a run
    # was cut short.
    retried = {task["id"] for task in tasks if "failed" in outcome_list(task)[:-1]}
    cut_short = {task["id"] for task in tasks if INTERRUPTED & set(outcome_list(task))}
    assert figures.multi_lease_tasks == len(retried | cut_short), figures.report()
    # And the workload's failing handlers always leave more than one: an always_fail that
    # failed by itself ran 1 + max_retries times; a completed fail_times failed its first
    # run, or lost it after it counted. (Unless the broker restarted: a run whose lease was
    # not yet committed when it died leaves no lease, and its attempt number is used again.)
    for task in tasks:
        planned = plan_of[task["id"]]
        failed_itself = task["status"] == "failed" and not error_says_dependency(task)
        completed_twice = task["status"] == "completed" and figures.victim != "broker"
        if (planned.handler == "always_fail" and failed_itself) or (
            planned.handler == "fail_times" and completed_twice
        ):
            assert len(task["leases"]) >= 2, f"{planned.handler} {task['id']}: {task['leases']}"

    # A submit is answered "already there" only when it was a retry whose first try had
    # reached the broker: at most a batch per retried batch, one per retried HTTP submit.
    retries = batch_size(len(workload.plan)) * figures.submit_retries + figures.http_retries
    assert figures.deduplicated <= retries, figures.report()


def outcome_list(task: dict[str, Any]) -> list[str | None]:
    return [lease["outcome"] for lease in task["leases"]]


def registrations(broker: Proc) -> Counter[str]:
    """How often each worker id registered, from the broker's log. A worker registers again
    only after a reconnect or after the broker declared it offline."""
    return Counter(re.findall(r"worker (\S+) registered:", broker.output()))


def check_counts_after_kills(
    tasks: list[dict[str, Any]],
    figures: Figures,
    killed: set[str],
    registered: Counter[str],
    stale: tuple[int, int],
) -> None:
    """The figures of the worker monkey, given the workers it killed with SIGKILL.

    A run is cut short only when the broker takes its worker for dead: a killed one, or a
    live one it did not hear from in time (a loaded machine), which then registers again.
    Only such a live worker can report a run late: a killed worker sends nothing more. The
    broker never restarts here, so it knows every lease it is told about, and each refused
    outcome is both counted and noted on its lease.
    """
    came_back = {worker for worker, times in registered.items() if times > 1}
    leases = [lease for task in tasks for lease in task["leases"]]
    cut = [lease for lease in leases if lease["outcome"] in INTERRUPTED]
    # Reruns: every run cut short was lost with its worker (nobody said goodbye), and only
    # on a killed worker or one that came back; at least every run a kill cut short.
    assert {lease["outcome"] for lease in cut} <= {"lost"}, "a worker said goodbye"
    on_live = {lease["worker_id"] for lease in cut} - killed - came_back
    assert not on_live, f"runs lost on workers never killed nor back: {on_live}"
    by_kills = {
        task["id"]
        for task in tasks
        for lease in task["leases"]
        if lease["outcome"] == "lost" and lease["worker_id"] in killed
    }
    assert len(by_kills) <= figures.rerun_tasks
    # Refused outcomes: only a lost run's late report by a worker that came back (none at
    # all when none did), each counted once: between the counts read before and after.
    for lease in leases:
        if lease["refused"] is not None:
            assert lease["outcome"] == "lost" and lease["worker_id"] in came_back, lease
    before, after = stale
    assert before <= figures.refused_leases <= after, figures.report()


# -- the monkeys ---------------------------------------------------------------------------


class Monkey(threading.Thread):
    """Calls ``strike`` whenever ``due(strikes so far)`` says so, until stopped, ``limit``
    strikes or ``within`` seconds. An exception ends it; ``check`` raises it in the test."""

    def __init__(
        self,
        name: str,
        strike: Callable[[], None],
        due: Callable[[int], bool],
        limit: int,
        within: float,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.strike = strike
        self.due = due
        self.limit = limit
        self.within = within
        self.strikes = 0
        self.error: BaseException | None = None
        self._stopping = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.within
        try:
            while (
                self.strikes < self.limit
                and not self._stopping.wait(0.05)
                and time.monotonic() < deadline
            ):
                if self.due(self.strikes):
                    self.strike()
                    self.strikes += 1
        except BaseException as exc:  # raised by check(), in the test's thread
            self.error = exc

    def finish(self, within: float) -> None:
        """Wait for the monkey to reach its ``limit`` by itself."""
        self.join(timeout=within)

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=60)
        assert not self.is_alive(), f"{self.name} did not stop"

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"{self.name} failed") from self.error


def every(rng: random.Random, low: float, high: float) -> Callable[[int], bool]:
    """A ``due`` that is true once every ``low``–``high`` seconds, at random."""
    next_at = time.monotonic() + rng.uniform(low, high)

    def due(_: int) -> bool:
        nonlocal next_at
        if time.monotonic() < next_at:
            return False
        next_at = time.monotonic() + rng.uniform(low, high)
        return True

    return due


def new_seed() -> int:
    return int(os.environ.get("ZMQS_CHAOS_SEED") or random.randrange(2**32))


# -- the scenarios ---------------------------------------------------------------------------


def test_worker_monkey(stack: Stack, tmp_path: Path) -> None:
    # Given a broker, three workers of 2–4 slots, and a workload.
    seed = new_seed()
    print(f"\n[chaos] test_worker_monkey seed={seed}")
    rng = random.Random(seed)
    figures = Figures("test_worker_monkey", seed, "worker")
    (tmp_path / "counters").mkdir()
    workload = Workload(plan_workload(CHAOS_TASKS, rng, tmp_path / "counters"), figures)
    stack.start_broker()
    live: list[Proc] = [
        stack.start_worker("--handlers", "flaky_handlers", slots=rng.randint(2, 4))
        for _ in range(WORKERS)
    ]
    first = [proc.name for proc in live]
    stack.wait_workers(*first)
    client = stack.client()
    monkey_rng = random.Random(seed + 1)  # its own: the monkey runs in another thread

    killed: set[str] = set()  # worker ids; a worker's id is its process's name

    def kill_and_replace() -> None:
        victim = monkey_rng.choice(live)
        victim.kill9()
        killed.add(victim.name)
        live.remove(victim)
        # A new worker (new id) at once: the cluster keeps its size, the victim's leases
        # are lost only when the broker notices the silence.
        live.append(
            stack.start_worker("--handlers", "flaky_handlers", slots=monkey_rng.randint(2, 4))
        )

    # When a monkey kills a random worker every 0.5–2 s while the workload runs.
    began = time.monotonic()
    monkey = Monkey(
        "worker monkey", kill_and_replace, every(monkey_rng, 0.5, 2.0), 10_000, FINAL_WITHIN
    )
    monkey.start()
    try:
        workload.submit(client, rng)
        health = wait_all_final(client, CHAOS_TASKS, FINAL_WITHIN)
    finally:
        monkey.stop()
    monkey.check()
    figures.elapsed = time.monotonic() - began
    figures.kills = figures.restarts = monkey.strikes  # each victim is replaced at once

    # Then every guarantee holds, the broker saw every kill, and the figures are what the
    # kills explain: reruns for the runs they cut short, no late outcome from the dead.
    assert figures.kills == len(killed) >= 1, "the workload was over before the monkey struck"
    stale_before = health["stale_outcomes"]
    tasks = list_all(client, CHAOS_TASKS)
    figures.stale_outcomes = stale_after = client.health()["stale_outcomes"]

    def all_killed_offline() -> bool:
        shown = {worker["id"]: worker for worker in client.workers(timeout=5.0)}
        # A worker killed before it registered never shows.
        return all(
            (shown[w]["status"], shown[w]["running"]) == ("offline", [])
            for w in killed & set(shown)
        )

    wait_for(all_killed_offline, what="every killed worker offline, holding nothing")
    # A live worker the broker took for dead (a loaded machine) registers again once it
    # runs again, which may be after its lost run ran elsewhere: wait for it.
    lost_on = {
        le["worker_id"] for task in tasks for le in task["leases"] if le["outcome"] == "lost"
    }
    broker = stack.broker
    assert broker is not None

    def back() -> Counter[str] | None:
        registered = registrations(broker)
        again = {worker for worker, times in registered.items() if times > 1}
        return registered if lost_on <= killed | again else None

    registered = wait_for(back, what=f"workers that lost runs ({lost_on}) killed or back")
    assert set(first) <= set(registered), f"broker log: {registered}"
    try:
        check_guarantees(workload, tasks, figures)
        check_counts(workload, tasks, figures)
        check_counts_after_kills(tasks, figures, killed, registered, (stale_before, stale_after))
        check_idempotent_resubmit(workload, client, None)
    finally:
        print(figures.report())


def test_broker_restarts(stack: Stack, tmp_path: Path) -> None:
    # Given a broker, three workers, the HTTP API, and a workload of which some tasks go
    # through POST /tasks.
    seed = new_seed()
    print(f"\n[chaos] test_broker_restarts seed={seed}")
    rng = random.Random(seed)
    figures = Figures("test_broker_restarts", seed, "broker")
    (tmp_path / "counters").mkdir()
    plan = plan_workload(CHAOS_TASKS, rng, tmp_path / "counters", http_share=0.1)
    workload = Workload(plan, figures)
    stack.start_broker()
    workers = [
        stack.start_worker("--handlers", "flaky_handlers", slots=rng.randint(2, 4))
        for _ in range(WORKERS)
    ]
    stack.start_api("--request-timeout", str(API_REQUEST_TIMEOUT))
    stack.wait_workers(*(proc.name for proc in workers))
    client = stack.client()
    watcher = stack.client()  # the monkey's own: a client is not thread-safe

    def progress() -> float:
        """How far the run is, 0 to 1: half submission, half execution."""
        counts: dict[str, int] = watcher.health(timeout=2.0)["tasks"]
        final = sum(counts[status] for status in FINAL)
        return (workload.acknowledged + final) / (2 * CHAOS_TASKS)

    def due(restarts: int) -> bool:
        # Evenly spread over submission and execution: restart k at k/(RESTARTS + 1) of
        # the way, and the ones still owed at once if the work is over early.
        try:
            return progress() >= (restarts + 1) / (RESTARTS + 1)
        except Unavailable:
            return False

    def restart_broker() -> None:
        assert stack.broker is not None
        stack.broker.kill9()
        stack.start_broker()  # same endpoint, same store; returns once it answers health

    # When the broker is killed with SIGKILL and started again five times during the run.
    began = time.monotonic()
    monkey = Monkey("broker monkey", restart_broker, due, RESTARTS, 2 * FINAL_WITHIN)
    monkey.start()
    try:
        workload.submit(client, rng, api=stack)
        wait_all_final(client, CHAOS_TASKS, FINAL_WITHIN)
        monkey.finish(within=FINAL_WITHIN)
    finally:
        monkey.stop()
    monkey.check()
    # After the last restart: whatever it interrupted must finish too.
    health = wait_all_final(client, CHAOS_TASKS, FINAL_WITHIN)
    figures.elapsed = time.monotonic() - began
    figures.kills = figures.restarts = monkey.strikes
    figures.stale_outcomes = health["stale_outcomes"]

    # Then every guarantee holds after five restarts, and HTTP shows what the client shows.
    assert figures.restarts == RESTARTS
    client = stack.client()
    tasks = list_all(client, CHAOS_TASKS)
    try:
        check_guarantees(workload, tasks, figures)
        check_counts(workload, tasks, figures)
        # A run is cut short here only by a restart: lost when no worker claims it in time,
        # or released when a worker gives back a run the restarted broker never knew. Only
        # such a run's report comes late. (stale_outcomes counts from the last start only,
        # and includes reports of leases a restart forgot, which have nowhere to be noted:
        # it bounds nothing here.)
        for task in tasks:
            for lease in task["leases"]:
                if lease["refused"] is not None:
                    assert lease["outcome"] in INTERRUPTED, f"task {task['id']}: {lease}"
        check_idempotent_resubmit(workload, client, stack)
        by_http = {workload.ids[p.index] for p in plan if p.via_http}
        sample = (
            rng.sample(tasks, min(40, len(tasks)))
            + [task for task in tasks if task["id"] in by_http][:10]
        )
        for task in sample:
            status, shown, _ = stack.http("GET", f"/tasks/{task['id']}")
            assert status == 200
            assert shown["status"] == task["status"]
            assert shown["worker_id"] == task["worker_id"]
            assert shown["idempotency_key"] == task["idempotency_key"]
            assert base64.b64decode(shown["result"] or "") == (task["result"] or b"")
            assert [(le["attempt"], le["worker_id"], le["outcome"]) for le in shown["leases"]] == [
                (le["attempt"], le["worker_id"], le["outcome"]) for le in task["leases"]
            ]
    finally:
        print(figures.report())


def test_frozen_worker_late_outcome_is_refused(stack: Stack, tmp_path: Path) -> None:
    # Given worker A running a 2 s sleep (it notes its pid when the run really begins).
    stack.start_broker()
    frozen = stack.start_worker("--handlers", "chaos_handlers", worker_id="frozen", slots=1)
    stack.wait_workers("frozen")
    client = stack.client()
    stale_before = client.health()["stale_outcomes"]
    note = tmp_path / "note"
    args = json.dumps({"seconds": 2.0, "note": str(note)}).encode()
    task_id = client.submit("noted_sleep", args)
    wait_for(lambda: str(frozen.pid) in note.read_text().split(), what="the run began on A")

    # When A freezes (SIGSTOP) until the broker has declared it offline and worker B has
    # run the task to completion, and then thaws (SIGCONT) and reports its own run.
    frozen.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: client.worker("frozen")["status"] == "offline", what="A offline")
        stack.start_worker("--handlers", "chaos_handlers", worker_id="standby", slots=1)
        task = client.wait(task_id, timeout=60)
        assert (task["status"], task["worker_id"]) == ("completed", "standby")
    finally:
        frozen.signal(signal.SIGCONT)

    # Then A's late outcome is refused as stale: the record keeps B's outcome. A reports its
    # run completed; or cancelled, when the broker's refusal of A's claim (A registers again
    # once it thaws) reaches A before the run's own end does, as a loaded machine allows.
    def refused() -> dict[str, Any] | None:
        task = client.get(task_id)
        return task if task["leases"][0]["refused"] is not None else None

    task = wait_for(refused, what="A's late outcome refused")
    history = [
        (le["attempt"], le["worker_id"], le["outcome"], le["refused"]) for le in task["leases"]
    ]
    assert history in [
        [(1, "frozen", "lost", late), (2, "standby", "completed", None)]
        for late in ("completed", "cancelled")
    ]
    assert (task["status"], task["worker_id"], task["attempts"]) == ("completed", "standby", 2)
    assert json.loads(task["result"]) == {"slept": 2.0}
    stale_after = client.health()["stale_outcomes"]
    print(
        f"\n[chaos] frozen worker: leases {history}, stale_outcomes {stale_before} -> {stale_after}"
    )
    # Exactly one late outcome (A's report of its one run), so exactly one refusal.
    assert stale_after == stale_before + 1
    # And A is back, holding nothing.
    stack.wait_workers("frozen")
    wait_for(lambda: client.worker("frozen")["running"] == [], what="A holds no lease")
