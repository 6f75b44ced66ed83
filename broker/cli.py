"""``zmq-broker``: run the broker until SIGINT or SIGTERM.

It binds its address, then opens (and locks) its store, then loads it: a broker whose
address is taken, or whose store another broker holds, exits 1 at once saying so, having
read nothing.

Given ``--curve-secret`` and ``--curve-allow`` it serves CURVE only, to the keys of the
allow folder (``broker.gate``), which SIGHUP makes it read again. Without them it runs in
plain mode, and then binds only a loopback address unless ``--insecure`` says otherwise
(``docs/security.md``).
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
from types import FrameType

import zmq

from broker.gate import Gate
from broker.server import BrokerServer, listen, max_frame
from broker.store import open_store
from common import curve, logs
from common import settings as config

#: Allocations between two young garbage collections (Python's default is 700). The broker
#: keeps most of what it allocates (tasks live until retention), so a collection finds
#: little garbage, and with the default the collector walked the older objects again and
#: again: the core alone took 40 % less time for 500,000 submits with this threshold.
GC_YOUNG_THRESHOLD = 10_000


def main(argv: list[str] | None = None) -> int:
    _, settings = config.command_line(
        "zmq-broker",
        "Run the scheduler's broker: one ROUTER socket for workers and clients, its state in "
        "one store.",
        config.BROKER,
        argv,
    )
    logs.configure(
        settings.log_level,
        "%(asctime)s broker %(levelname)s %(name)s: %(message)s",
        settings.log_format,
    )
    # The socket before the store: a broker whose address is taken (by another broker,
    # most likely) stops before it so much as opens the store.
    problem = security_problem(settings)
    if problem:
        print(f"zmq-broker: {problem}", file=sys.stderr)
        return 2
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    gate: Gate | None = None
    if settings.curve_secret:
        gate = Gate(context, settings.curve_allow)
        gate.start()
    else:
        logging.getLogger("broker").warning(
            "plain mode: no CURVE keys, so any peer that reaches %s may act as any worker "
            "or client (docs/security.md)", settings.broker,
        )  # fmt: skip
    try:
        return serve(settings, context, gate)
    finally:
        if gate is not None:
            gate.stop()


def security_problem(settings: config.Settings) -> str:
    """Why these settings must not start a broker, or empty: CURVE needs both its
    settings, and plain mode a loopback address unless ``--insecure``."""
    if bool(settings.curve_secret) != bool(settings.curve_allow):
        return "CURVE needs both --curve-secret and --curve-allow"
    if (
        not settings.curve_secret
        and not settings.insecure
        and not curve.is_loopback(settings.broker)
    ):
        return (
            f"refusing to bind {settings.broker} in plain mode (no CURVE keys): anyone who "
            "reaches it could take over workers and tasks. Give --curve-secret and "
            "--curve-allow (zmq-scheduler keygen), bind a loopback address, or pass "
            "--insecure on a network you trust."
        )
    return ""


def serve(
    settings: config.Settings, context: zmq.Context[zmq.Socket[bytes]], gate: Gate | None
) -> int:
    """Bind, open the store, and run until a signal; returns the exit status."""
    try:
        socket = listen(context, settings.broker, settings.curve_secret, max_frame(settings))
    except (zmq.ZMQError, OSError, ValueError) as exc:
        print(f"zmq-broker: cannot bind {settings.broker}: {exc}", file=sys.stderr)
        return 1
    try:
        store = open_store(settings.data, settings.sync)
    except (ValueError, RuntimeError, OSError) as exc:
        socket.close(linger=0)
        print(f"zmq-broker: cannot open the store: {exc}", file=sys.stderr)
        return 1
    server = BrokerServer(settings, store, context, socket=socket)
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.stop()  # only sets a flag; the loop notices within one poll

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if gate is not None:
        allow = gate

        def on_hangup(signum: int, frame: FrameType | None) -> None:
            allow.reload()  # only sets a flag; the gate's thread reads the folder

        signal.signal(signal.SIGHUP, on_hangup)
    try:
        server.bind()
    except Exception as exc:
        print(f"zmq-broker: cannot start: {exc}", file=sys.stderr)
        return 1
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
