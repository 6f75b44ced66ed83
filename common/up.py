"""``zmq-scheduler up``: a whole local scheduler in one command.

Starts the broker, the HTTP API under gunicorn and N local workers as child
processes, restarts any child that dies, and stops them all on Ctrl-C or
SIGTERM. Signal handlers only set a flag; the supervision loop does the work.

A child that fails as it starts (its port taken, its store held by another broker, a
handler module missing) would fail again at once: such quick failures are restarted
after a back-off (``--restart-delay``, 1 s by default, doubling), and after
``MAX_QUICK_FAILURES`` in a row ``up`` stops everything and exits 1, printing the last
lines the child wrote. A child that ran for ``STARTUP_WINDOW`` seconds before it died is
restarted after ``--restart-delay``. Children's standard error passes through ``up``
(which keeps each one's last lines for that).

The children die with ``up`` however it ends: on Linux each is started with the
parent-death signal set to SIGTERM, so even ``kill -9`` of ``up`` leaves no broker or
API holding its ports. This module must never start a child from a thread other than
the main one: the parent-death signal fires when the thread that started the child ends.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import logging
import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import IO, cast

from common import cli, keyring, logs
from common import settings as config
from common.settings import Settings
from common.tokens import TokenFileError, read_tokens

log = logging.getLogger("zmq-scheduler")

#: Seconds children get to stop after SIGTERM before they are killed; a worker gets its
#: drain grace (``--drain-grace``) besides.
STOP_GRACE = 10.0
#: A child that exits within this many seconds of its start failed at start-up (gunicorn
#: tries a taken port for 5 s before it gives up).
STARTUP_WINDOW = 10.0
#: Start-up failures in a row of one child after which ``up`` stops everything.
MAX_QUICK_FAILURES = 5
#: Lines of a child's standard error kept, to print when ``up`` gives up on it.
TAIL_LINES = 20
#: Seconds the supervision loop waits for children's output before it looks at them.
POLL_SECONDS = 0.2
#: ``prctl`` option that sets the signal a process gets when its parent dies (Linux).
PR_SET_PDEATHSIG = 1


@dataclass
class Backoff:
    """When to restart a child that exited: a policy with no clock of its own."""

    #: Seconds to wait before restarting a child that died (``--restart-delay``); the first
    #: back-off of a child that keeps failing as it starts, doubled at each failure in a row.
    restart_delay: float = 1.0
    #: Start-up failures in a row.
    failures: int = 0

    def delay(self, ran_for: float) -> float | None:
        """Seconds to wait before restarting a child that ran ``ran_for`` seconds, or None
        to give up on it."""
        if ran_for >= STARTUP_WINDOW:
            self.failures = 0
            return self.restart_delay
        self.failures += 1
        if self.failures >= MAX_QUICK_FAILURES:
            return None
        return self.restart_delay * 2.0 ** (self.failures - 1)


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    #: ``time.monotonic()`` of the last start.
    started_at: float = 0.0
    #: When to start it again, once it has died (None: it runs, or is not to be restarted).
    restart_at: float | None = None
    backoff: Backoff = field(default_factory=Backoff)
    #: The last lines it wrote to standard error.
    tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=TAIL_LINES)
    )
    #: What it wrote after its last newline.
    partial: bytes = b""
    #: Seconds it gets to stop after SIGTERM before it is killed.
    grace: float = STOP_GRACE
    #: A worker: stopped before the others, so that the broker takes what its drain reports.
    drains: bool = False
    #: The signal it gets should ``up`` die without stopping it (Linux).
    orphan_signal: int = signal.SIGTERM

    def start(self, selector: selectors.BaseSelector) -> None:
        self.process = subprocess.Popen(
            self.argv, stderr=subprocess.PIPE, preexec_fn=die_with_parent(self.orphan_signal)
        )
        pipe = self.process.stderr
        assert pipe is not None
        os.set_blocking(pipe.fileno(), False)
        selector.register(pipe, selectors.EVENT_READ, (self, pipe))
        self.started_at = time.monotonic()
        self.restart_at = None
        self.tail.clear()  # the last lines of this run, not of the one before
        log.info("started %s (pid %d): %s", self.name, self.process.pid, shlex.join(self.argv))

    def exited(self) -> bool:
        """Whether it was started and has exited."""
        return self.process is not None and self.process.poll() is not None

    def relay(self, data: bytes) -> None:
        """Pass what it wrote to standard error on, whole lines at a time, keeping the last."""
        self.partial += data
        if not data and self.partial:  # the end of the pipe: a last line with no newline
            self.partial += b"\n"
        *lines, self.partial = self.partial.split(b"\n")
        if lines:
            sys.stderr.buffer.write(b"".join(line + b"\n" for line in lines))
            sys.stderr.buffer.flush()
            self.tail.extend(line.decode("utf-8", "replace") for line in lines)


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """What a child runs between fork and exec so that it gets ``signum`` when ``up`` dies
    (Linux); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def set_signal() -> None:
        # up's own handlers would catch a SIGTERM that comes before exec, and exec would
        # forget it: the default action until exec, which resets them anyway.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signum), *[ctypes.c_ulong(0)] * 3)
        if os.getppid() != parent:  # up died before the signal was set, which never comes
            os.kill(os.getpid(), signum)

    return set_signal


def local_endpoint(endpoint: str) -> str:
    """The endpoint local children connect to when the broker binds all interfaces."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if endpoint.startswith(wildcard):
            return "tcp://127.0.0.1:" + endpoint[len(wildcard) :]
    return endpoint


def children(settings: Settings) -> list[Child]:
    """The broker, the API and the workers, each given every setting it takes (with
    ``--secure``, its own CURVE keys, ``common.keyring``)."""
    python = sys.executable
    own: dict[str, Settings] = {}
    if settings.secure:
        settings, own = keyring.secure_stack(settings)
    broker = config.to_argv(settings, config.BROKER)
    endpoint = local_endpoint(settings.broker)
    local = replace(settings, broker=endpoint)
    api = config.to_argv(replace(own.get("api", local), broker=endpoint), config.API)
    out = [
        Child("broker", [python, "-m", "broker", *broker]),
        # Orphaned, the API quits at once (gunicorn's SIGINT): a graceful stop would wait up
        # to its graceful timeout for a gevent worker whose standard error, up's pipe, is
        # gone, and nobody is left to tell its clients' answers to anyway.
        Child("api", [python, "-m", "api", *api], orphan_signal=signal.SIGINT),
    ]
    for i in range(1, settings.workers + 1):
        worker_id = f"{settings.worker_id}-{i}" if settings.worker_id else ""
        mine = own.get(f"worker-{i}", replace(local, worker_id=worker_id))
        worker = config.to_argv(replace(mine, broker=endpoint), config.WORKER)
        argv = [python, "-m", "worker", *worker]
        grace = settings.drain_grace + STOP_GRACE
        out.append(Child(f"worker-{i}", argv, grace=grace, drains=True))
    for child in out:
        child.backoff = Backoff(settings.restart_delay)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="zmq-scheduler",
        description="A distributed task scheduler over ZeroMQ. 'zmq-scheduler up' runs a "
        "whole local one.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {config.version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    keyring.add_keygen(sub)
    cli.add_commands(sub)
    up = sub.add_parser(
        "up",
        help="run broker, API and local workers until Ctrl-C",
        description="Run a broker, the REST API under gunicorn and N local workers as child "
        "processes until Ctrl-C or SIGTERM. It takes every setting and passes each on to the "
        "children that use it; every flag can be set from the environment instead "
        "(ZMQS_<NAME>), a flag wins. A child that dies is restarted; one that keeps failing "
        "as it starts makes up stop everything and exit 1.",
    )
    config.add_command(up, config.UP)
    args = parser.parse_args(argv)
    if args.command == "keygen":
        return keyring.run_keygen(args)
    if args.command in cli.COMMANDS:
        return cli.run(args)
    settings = config.from_args(up, args, config.UP)
    try:  # the API would refuse it as it starts: refused before anything starts
        if settings.api_tokens:
            read_tokens(settings.api_tokens)
    except TokenFileError as exc:
        up.error(str(exc))
    logs.configure(settings.log_level, "%(asctime)s zmq-scheduler %(message)s", settings.log_format)
    try:
        procs = children(settings)
    except (OSError, ValueError) as exc:
        print(f"zmq-scheduler: cannot make the CURVE keys: {exc}", file=sys.stderr)
        return 1
    if settings.secure:
        log.info("%s", keyring.client_hint(settings))
    return supervise(procs)


def supervise(procs: list[Child]) -> int:
    """Run the children until a signal (exit status 0) or one of them keeps failing as it
    starts (1)."""
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    selector = selectors.DefaultSelector()
    failed: Child | None = None
    for child in procs:
        child.start(selector)
    try:
        while failed is None:
            # Woken for the next restart too: a --restart-delay under POLL_SECONDS holds.
            due = [child.restart_at for child in procs if child.restart_at is not None]
            wait = POLL_SECONDS if not due else min(POLL_SECONDS, min(due) - time.monotonic())
            relay_output(selector, max(0.0, wait))
            if stopping:  # Ctrl-C reaches the children too: their exits are no crash
                break
            now = time.monotonic()
            for child in procs:
                if child.restart_at is not None and now >= child.restart_at:
                    child.restarts += 1
                    child.start(selector)
                elif child.restart_at is None and child.exited() and not restart_later(child, now):
                    failed = child
                    break
    finally:
        stop_all(procs, selector)
    if failed is None:
        return 0
    print(
        f"zmq-scheduler: {failed.name} exited {MAX_QUICK_FAILURES} times in a row within "
        f"{STARTUP_WINDOW:g} s of its start; stopped everything. The last lines it wrote:",
        *(f"    {line}" for line in failed.tail),
        sep="\n",
        file=sys.stderr,
    )
    return 1


def restart_later(child: Child, now: float) -> bool:
    """Set when to restart a child that exited; False when it is to be given up on."""
    assert child.process is not None
    ran_for = now - child.started_at
    delay = child.backoff.delay(ran_for)
    status = child.process.returncode
    if delay is None:
        log.error(
            "%s (pid %d) exited with %s after %.1f s, its start-up failure %d in a row",
            child.name, child.process.pid, status, ran_for, child.backoff.failures,
        )  # fmt: skip
        return False
    child.restart_at = now + delay
    log.warning(
        "%s (pid %d) exited with %s after %.1f s; restarting in %g s",
        child.name, child.process.pid, status, ran_for, delay,
    )  # fmt: skip
    return True


def relay_output(selector: selectors.BaseSelector, timeout: float) -> None:
    """Pass on what children wrote to standard error, waiting up to ``timeout`` for some."""
    for key, _ in selector.select(timeout):
        child, pipe = cast(tuple[Child, IO[bytes]], key.data)
        try:
            data = os.read(pipe.fileno(), 65536)
        except BlockingIOError:
            continue
        child.relay(data)
        if not data:  # every process holding the pipe (gunicorn's workers too) is gone
            selector.unregister(pipe)
            pipe.close()


def stop_all(procs: list[Child], selector: selectors.BaseSelector) -> None:
    """Stop the workers, each within its grace, while the broker still takes what their
    drain reports; then the others."""
    stop([c for c in procs if c.drains], selector)
    stop([c for c in procs if not c.drains], selector)
    close_output(selector)
    log.info("all stopped")


def stop(procs: list[Child], selector: selectors.BaseSelector) -> None:
    """SIGTERM to each of these children, then SIGKILL to those still there past their grace."""
    live = [c for c in procs if c.process is not None and c.process.poll() is None]
    now = time.monotonic()
    deadlines = {id(c): now + c.grace for c in live}
    for child in live:
        assert child.process is not None
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
    while live:
        relay_output(selector, 0.1)  # a child blocked on a full pipe would never stop
        now = time.monotonic()
        for child in list(live):
            assert child.process is not None
            if child.process.poll() is not None:
                live.remove(child)
            elif now >= deadlines[id(child)]:
                child.process.kill()
                child.process.wait()
                live.remove(child)


def close_output(selector: selectors.BaseSelector) -> None:
    """Pass on what the children wrote last, gunicorn's workers' included, up to a moment
    after they stopped; then close their pipes."""
    deadline = time.monotonic() + 1.0
    while selector.get_map() and time.monotonic() < deadline:
        relay_output(selector, 0.1)
    for key in list(selector.get_map().values()):
        _, pipe = cast(tuple[Child, IO[bytes]], key.data)
        selector.unregister(pipe)
        pipe.close()
    selector.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
