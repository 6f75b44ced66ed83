"""``zmq-broker``: run the broker until SIGINT or SIGTERM.

It binds its address, then opens (and locks) its store, then loads it: a broker whose
address is taken, or whose store another broker holds, exits 1 at once saying so, having
read nothing.
"""

from __future__ import annotations

import gc
import signal
import sys
from types import FrameType

import zmq

from broker.server import BrokerServer, listen
from broker.store import open_store
from common import logs
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
    logs.configure(settings.log_level, "%(asctime)s broker %(levelname)s %(name)s: %(message)s")
    # The socket before the store: a broker whose address is taken (by another broker,
    # most likely) stops before it so much as opens the store.
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    try:
        socket = listen(context, settings.broker)
    except zmq.ZMQError as exc:
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
    try:
        server.bind()
    except Exception as exc:
        print(f"zmq-broker: cannot start: {exc}", file=sys.stderr)
        return 1
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
