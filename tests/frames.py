"""Hypothesis strategies of the messages a peer may send the broker, honest or not.

Each message starts as a valid one, built from the types of ``common.messages``,
``common.ops`` and ``common.spec`` with fields near their bounds in ``common.limits``,
and is then mutated field by field: a value replaced by one just beyond its bound or of
another type (NaN, infinities, 64-bit extremes, msgpack extension types, nested maps),
a key removed or added, a list grown to its limit and one past it. Beside those come
messages the protocol does not allow at all: broker-to-worker commands, unknown commands,
other signatures, too many or too few frames, and bodies that are not msgpack, are
msgpack but not a map, or hold invalid UTF-8.

A message is a ``Draft``: the ids of tasks and runs it names are ``Ref`` placeholders,
filled in with ids the broker really handed out when the message leaves (``resolve``),
and a request's number is ``REQ``, a fresh number. ``expects_reply`` tells from the
frames alone whether the broker owes an answer. No worker registration or HTTP worker
names the ``echo`` handler (``HONEST_HANDLER``), so tasks an honest client submits to it
only ever run on the real worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hypothesis.strategies as st
import msgpack

from common import messages, ops, protocol
from common.limits import (
    MAX_ATTEMPT,
    MAX_BATCH,
    MAX_CAPABILITIES,
    MAX_CURSOR,
    MAX_DEPENDENCIES,
    MAX_ERROR_LENGTH,
    MAX_HOST_LENGTH,
    MAX_HTTP_WAIT,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PAGE,
    MAX_PID,
    MAX_PRIORITY,
    MAX_REQUEST_NUMBER,
    MAX_REQUIRES,
    MAX_RESOURCE,
    MAX_RETRIES,
    MAX_SLOTS,
    MAX_TIMEOUT,
    MAX_TRACEBACK_LENGTH,
    MAX_WAIT,
)
from common.models import TaskStatus
from common.spec import TaskSpec

#: The handler the honest client's tasks use: no fuzzed registration serves it.
HONEST_HANDLER = "echo"
#: Longest a fuzzed request may ask the broker to hold its answer, in seconds.
SHORT_HOLD = 1.0
#: Worker ids the peers share, so that registrations collide across peers and kinds.
WORKER_IDS = ("fz-w0", "fz-w1", "fz-w2", "fz-h0", "fz-h1")
#: Handlers fuzzed tasks ask for: the real worker's (with cheap arguments) and some nobody serves.
TASK_HANDLERS = (HONEST_HANDLER, "sleep", "fibonacci", "fz-a", "fz-b", "x" * MAX_NAME_LENGTH)
#: What fuzzed workers serve: never the honest handler.
CAPABILITIES = ("sleep", "fibonacci", "fz-a", "fz-b", "gpu", "x" * MAX_NAME_LENGTH)


@dataclass(frozen=True)
class Ref:
    """A task id (``kind="task"``) or a run's task id or attempt (``kind="run"``,
    ``part``) that the broker handed out, chosen by ``index`` when the message leaves."""

    kind: str
    index: int
    part: str = "task_id"


class _Req:
    """A request number: a fresh one for each message."""

    def __repr__(self) -> str:
        return "REQ"


REQ: Any = _Req()


@dataclass(frozen=True)
class Raw:
    """A body sent as these bytes, not packed."""

    data: bytes


@dataclass(frozen=True)
class Draft:
    """One message before it leaves: frames ahead of the body, the body (a value to pack,
    or ``Raw``), and frames after it (a message of too many frames)."""

    head: tuple[bytes, ...]
    body: Any
    tail: tuple[bytes, ...] = ()
    #: Send only the head (a message of too few frames).
    headless: bool = False
    #: Messages sent right after this one.
    then: tuple[Draft, ...] = ()


# -- values near and beyond every bound ------------------------------------------------

#: Integers at the edges of every bound, of a signed and an unsigned 64 bits.
EDGE_INTS = sorted(
    {0, 1, -1, 2, MAX_SLOTS, MAX_SLOTS + 1, MAX_RETRIES, MAX_RETRIES + 1, MAX_PAGE, MAX_PAGE + 1,
     MAX_ATTEMPT, MAX_ATTEMPT + 1, MAX_PID + 1, MAX_PRIORITY, MAX_PRIORITY + 1, -MAX_PRIORITY,
     -MAX_PRIORITY - 1, MAX_CURSOR, 2**63 - 1, -(2**63), 2**64 - 1, 300, 301, 31}
)  # fmt: skip
EDGE_FLOATS = [
    math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, -5e-324, 1e-9, MAX_TIMEOUT,
    MAX_TIMEOUT * (1 + 1e-15), MAX_RESOURCE, MAX_RESOURCE * 1.0000001, 1e308, -1e308,
    MAX_WAIT, MAX_WAIT - 1e-9, MAX_HTTP_WAIT, MAX_HTTP_WAIT + 1e-9, 2.0**63, 2.0**64,
]  # fmt: skip
EDGE_TEXTS = [
    "", " ", "a", "x" * MAX_ID_LENGTH, "x" * (MAX_ID_LENGTH + 1), "y" * MAX_NAME_LENGTH,
    "y" * (MAX_NAME_LENGTH + 1), "a/b", "a b", "ü" * MAX_ID_LENGTH, "\x00", "a\nb", "🦀" * 300,
    "completed", "failed", "cancelled", "released", "pending", "running", "cpu", "memory",
    "disk", "e" * (MAX_ERROR_LENGTH + 1), "t" * (MAX_TRACEBACK_LENGTH + 1),
    "h" * (MAX_HOST_LENGTH + 1),
]  # fmt: skip
ODD_VALUES: list[Any] = [
    None, True, False, b"", b"\xff" * 8, [], {}, [1, "a"], {"a": 1}, {"": None}, [[[[]]]],
    msgpack.ExtType(5, b"x"), msgpack.ExtType(127, b""), msgpack.Timestamp(0, 0),
    {"task_id": "a", "attempt": 1}, ["a", 1], ("a", 1, 2), {b"bytes-key": 1},
]  # fmt: skip


def hostile() -> st.SearchStrategy[Any]:
    """Any value a field should refuse, or accept at the edge of its bound."""
    return st.one_of(
        st.sampled_from(EDGE_INTS),
        st.sampled_from(EDGE_FLOATS),
        st.sampled_from(EDGE_TEXTS),
        st.sampled_from(ODD_VALUES),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.binary(max_size=20),
        st.builds(Ref, st.just("task"), st.integers(0, 50)),
        st.recursive(
            st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=4),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=4), inner, max_size=3)
            ),
            max_leaves=8,
        ),
    )


# -- valid messages, built from the protocol's own types --------------------------------

task_refs = st.builds(Ref, st.just("task"), st.integers(0, 1000))
worker_ids = st.sampled_from(WORKER_IDS)
short_holds = st.sampled_from([0, 0.0, 0.01, 0.05, 0.2])
capabilities = st.lists(st.sampled_from(CAPABILITIES), max_size=4)
resources = st.dictionaries(
    st.sampled_from(["cpu", "memory", "disk"]),
    st.sampled_from([0.0, 1.0, 0.5, 4, MAX_RESOURCE]) | st.none(),
    max_size=3,
)
args_bytes = st.sampled_from(
    [b"", b"x", b'{"seconds": 0.01}', b'{"seconds": -1}', b'{"n": 10}', b'{"n": 1e400}',
     b"\xff\xfe", b"{}", b"[]"]
) | st.binary(max_size=32)  # fmt: skip


def _run(index: int) -> messages.RunKey:
    return messages.RunKey(Ref("run", index, "task_id"), Ref("run", index, "attempt"))  # type: ignore[arg-type]


specs = st.builds(
    TaskSpec,
    handler=st.sampled_from(TASK_HANDLERS),
    name=st.sampled_from(["", "n", "y" * MAX_NAME_LENGTH]),
    args=args_bytes,
    dependencies=st.lists(task_refs, max_size=3),
    priority=st.sampled_from([0, 1, -1, MAX_PRIORITY, -MAX_PRIORITY]),
    max_retries=st.sampled_from([0, 1, 3, MAX_RETRIES]),
    timeout=st.sampled_from([None, 0.05, 1.0, MAX_TIMEOUT]),
    requires=st.lists(st.sampled_from(CAPABILITIES), max_size=2),
    resources=resources,
    idempotency_key=st.sampled_from([None, "", "k0", "k1", "k" * MAX_NAME_LENGTH]),
)

ready = st.builds(
    messages.Ready,
    id=worker_ids,
    slots=st.sampled_from([1, 2, MAX_SLOTS]),
    capabilities=capabilities,
    resources=resources,
    running=st.lists(st.integers(0, 20).map(_run), max_size=3),
    host=st.sampled_from(["", "h", "h" * MAX_HOST_LENGTH]),
    pid=st.sampled_from([0, 1, MAX_PID]),
    tags=st.lists(st.sampled_from(CAPABILITIES), max_size=2),
)

outcome = st.builds(
    messages.RunOutcome,
    run=st.integers(0, 20).map(_run),
    status=st.sampled_from([TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED]),
    result=st.none() | st.binary(max_size=16),
    error=st.sampled_from([None, "", "boom", "e" * MAX_ERROR_LENGTH]),
    traceback=st.sampled_from([None, "", "t" * MAX_TRACEBACK_LENGTH]),
)

requests: st.SearchStrategy[Any] = st.one_of(
    st.builds(
        ops.Submit,
        tasks=st.lists(specs, min_size=1, max_size=3),
        wait=st.none() | short_holds,
        refuse_unservable=st.booleans(),
    ),
    st.builds(ops.Get, id=task_refs),
    st.builds(
        ops.ListTasks,
        status=st.none() | st.sampled_from(list(TaskStatus)),
        handler=st.none() | st.sampled_from(TASK_HANDLERS),
        limit=st.sampled_from([1, 10, MAX_PAGE]),
        after=st.sampled_from([0, 1, 5, MAX_CURSOR]),
    ),
    st.builds(ops.CancelTask, id=task_refs),
    st.builds(ops.Wait, id=task_refs, timeout=short_holds),
    st.builds(ops.WaitMany, ids=st.lists(task_refs, max_size=4), timeout=short_holds),
    st.just(ops.ListWorkers()),
    st.builds(ops.GetWorker, id=worker_ids),
    st.just(ops.Health()),
    st.builds(
        ops.HttpRegister,
        id=worker_ids,
        capabilities=capabilities,
        resources=resources,
        tags=st.lists(st.sampled_from(CAPABILITIES), max_size=2),
    ),
    st.builds(ops.HttpNext, id=worker_ids, wait=short_holds),
    st.builds(ops.HttpHeartbeat, id=worker_ids),
    st.builds(
        ops.HttpComplete,
        worker_id=worker_ids,
        task_id=task_refs,
        status=st.sampled_from([TaskStatus.COMPLETED, TaskStatus.FAILED]),
        result=st.none() | st.binary(max_size=16),
        error=st.sampled_from([None, "boom"]),
        traceback=st.sampled_from([None, "tb"]),
    ),
)

#: A valid body of each command a peer sends.
valid_bodies: st.SearchStrategy[tuple[protocol.Command, dict[str, Any]]] = st.one_of(
    ready.map(lambda r: (protocol.Command.READY, r.to_body())),
    st.lists(outcome, min_size=1, max_size=3).map(
        lambda rs: (protocol.Command.DONE, messages.Done(rs).to_body())
    ),
    st.sampled_from([protocol.Command.PONG, protocol.Command.DRAIN, protocol.Command.BYE]).map(
        lambda c: (c, {})
    ),
    requests.map(lambda r: (protocol.Command.REQUEST, ops.encode_request(REQ, r.OP, r.to_args()))),
)

# -- mutations -------------------------------------------------------------------------

Path = tuple[Any, ...]


def _paths(value: Any, path: Path = ()) -> list[Path]:
    """Every place in a body a value sits, the body itself first."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(_paths(item, (*path, key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found.extend(_paths(item, (*path, i)))
    return found


def _get(value: Any, path: Path) -> Any:
    for step in path:
        value = value[step]
    return value


def _replace(value: Any, path: Path, new: Any) -> Any:
    """A copy of ``value`` with the value at ``path`` replaced by ``new`` (``_DELETE``:
    removed)."""
    if not path:
        return new
    step, rest = path[0], path[1:]
    copy: Any = dict(value) if isinstance(value, dict) else list(value)
    changed = _replace(copy[step], rest, new)
    if changed is _DELETE:
        del copy[step]
    else:
        copy[step] = changed
    return copy


_DELETE: Any = object()

#: Lists at the edge of each limit: (length, kept as one more than allowed, or at it).
LIST_LIMITS = [MAX_BATCH, MAX_DEPENDENCIES, MAX_REQUIRES, MAX_CAPABILITIES, MAX_SLOTS]


@st.composite
def mutated(draw: st.DrawFn, body: Any) -> Any:
    """``body`` with up to three of its values replaced, removed, added or grown."""
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        path = draw(st.sampled_from(_paths(body)))
        kind = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "grow"]))
        current = _get(body, path)
        if kind == "replace":
            body = _replace(body, path, draw(hostile()))
        elif kind == "delete" and path:
            body = _replace(body, path, _DELETE)
        elif kind == "add" and isinstance(current, dict):
            key = draw(
                st.sampled_from(["extra", "id", "tasks", "", "y" * 300]) | st.text(max_size=8)
            )
            body = _replace(body, path, {**current, key: draw(hostile())})
        # Rare: a list of thousands of entries costs the broker real work.
        elif (
            kind == "grow"
            and isinstance(current, list)
            and current
            and draw(st.integers(0, 9)) == 0
        ):
            length = draw(st.sampled_from(LIST_LIMITS)) + draw(st.sampled_from([0, 1]))
            body = _replace(body, path, [current[0]] * length)
    return body


def shorten_holds(body: Any) -> Any:
    """A request that would hold its answer longer than ``SHORT_HOLD`` asks for a negative
    wait instead (refused at once), so that every answer comes within a batch."""
    if not isinstance(body, dict) or not isinstance(body.get("args"), dict):
        return body
    op = body.get("op")
    for name in ("wait", "timeout"):
        if isinstance(op, str) and _holds_long(body["args"].get(name)):
            body = {**body, "args": {**body["args"], name: -1}}
    return body


def _holds_long(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value > SHORT_HOLD


# -- messages the protocol does not allow ----------------------------------------------

GARBAGE_BODIES = [
    b"", b"\xc1", b"\x80" + b"junk", b"\x81\x01\x02", b"\x81\xa1a\xa2\xff\xfe",  # invalid UTF-8
    b"\x92\x01\x02", b"\xc0", b"\xa3abc", b"\x91" * 100_000 + b"\xc0",  # nested past any limit
    b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",  # huge lengths
    b"\xc7\xff\xff", b"\xd6\xff\x00\x00\x00",  # a bad timestamp
    b"\x81\xa3req\x01",  # a map without op
    b"\x83\xa3req\x01\xa2op\xa6health\xa4args\x81\xc4\x01k\x01",  # a bytes key
]  # fmt: skip
SIGNATURES = [b"", b"ZS0", b"ZS2", b"zs1", b"ZS1\x00", b"ZS1" * 100]
COMMANDS = [c.value for c in protocol.Command] + [b"", b"ready", b"READY ", b"\xff", b"X" * 1000]


def drafts() -> st.SearchStrategy[Draft]:
    """Any message a peer may send, valid or not; mostly ones of the right shape."""
    shaped = valid_bodies.flatmap(
        lambda cb: mutated(cb[1]).map(lambda b: Draft((protocol.SIGNATURE, cb[0].value), b))
    )
    # A peer registered in the same batch: what a worker says next is decoded, not resynced.
    registered = st.tuples(ready, st.lists(shaped, min_size=1, max_size=3)).map(
        lambda rs: Draft((protocol.SIGNATURE, b"READY"), rs[0].to_body(), then=tuple(rs[1]))
    )
    other_command = st.builds(
        lambda c, b: Draft((protocol.SIGNATURE, c), b),
        st.sampled_from(COMMANDS) | st.binary(max_size=12),
        valid_bodies.map(lambda cb: cb[1]) | hostile(),
    )
    garbage = st.builds(
        lambda c, b: Draft((protocol.SIGNATURE, c), Raw(b)),
        st.sampled_from(COMMANDS),
        st.sampled_from(GARBAGE_BODIES) | st.binary(max_size=64),
    )
    wrong_frames = st.builds(
        Draft,
        st.tuples(
            st.sampled_from(SIGNATURES) | st.just(protocol.SIGNATURE), st.sampled_from(COMMANDS)
        ),
        valid_bodies.map(lambda cb: cb[1]),
        st.lists(st.binary(max_size=8), max_size=3).map(tuple),
        st.booleans(),
    )
    raw_frames = st.lists(st.binary(max_size=16), min_size=1, max_size=5).map(
        lambda frames: Draft(tuple(frames[:-1]), Raw(frames[-1]))
    )
    return st.one_of(
        *[registered] * 2, *[shaped] * 6, other_command, garbage, wrong_frames, raw_frames
    )


# -- when a message leaves ---------------------------------------------------------------


@dataclass
class Known:
    """What the broker handed out that a peer's next messages may name."""

    tasks: list[str]
    runs: list[tuple[str, int]]


def resolve(value: Any, known: Known, next_req: Callable[[], int]) -> Any:
    """``value`` with every placeholder filled in."""
    if value is REQ:
        return next_req()
    if isinstance(value, Ref):
        if value.kind == "task":
            return known.tasks[value.index % len(known.tasks)] if known.tasks else "fz-none"
        task_id, attempt = known.runs[value.index % len(known.runs)] if known.runs else ("fz", 1)
        return task_id if value.part == "task_id" else attempt
    if isinstance(value, dict):
        return {k: resolve(v, known, next_req) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, known, next_req) for v in value]
    return value


def flatten(drafts: Sequence[Draft]) -> list[Draft]:
    """The drafts in the order they leave, each followed by those it says come next."""
    out: list[Draft] = []
    for draft in drafts:
        out.append(draft)
        out.extend(flatten(draft.then))
    return out


def frames_of(draft: Draft, known: Known, next_req: Callable[[], int]) -> list[bytes]:
    """The frames to send for ``draft``."""
    if draft.headless:
        return list(draft.head) or [b""]
    if isinstance(draft.body, Raw):
        body = draft.body.data
    else:
        body = msgpack.packb(shorten_holds(resolve(draft.body, known, next_req)), use_bin_type=True)
    return [*draft.head, body, *draft.tail]


def expects_reply(frames: Sequence[bytes]) -> int | None:
    """The number of the request these frames make, if the broker owes it an answer
    (``docs/protocol.md``: three frames, this signature, ``REQUEST``, a msgpack map with a
    ``req`` from 0 to 2⁶³ - 1); else None."""
    if len(frames) != 3 or frames[0] != protocol.SIGNATURE or frames[1] != b"REQUEST":
        return None
    try:
        body = msgpack.unpackb(frames[2], raw=False, strict_map_key=True)
    except Exception:
        return None
    req = body.get("req") if isinstance(body, dict) else None
    if type(req) is not int or not 0 <= req <= MAX_REQUEST_NUMBER:
        return None
    return req
