"""What the attack tests share: a prober that times the broker's health throughout an
attack, a broker's resident memory, and raw peers that send what they like.

The sizes come in two scales: ``small`` (the default, seconds each, in ``make test``) and
``full`` (``ZMQS_ATTACK_SCALE=full``, ``make attack``: the sizes the attacks were first
measured at).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from common.client import Client
from common.errors import SchedulerError
from common.protocol import Command, pack

FULL = os.environ.get("ZMQS_ATTACK_SCALE", "small") == "full"


def scaled(small: int, full: int) -> int:
    """A size: ``small`` in ``make test``, ``full`` in ``make attack``."""
    return full if FULL else small


#: A probe of the broker's health answered later than this counts as slow.
PROBE_DEADLINE = 0.2
#: Share of probes that may be slow: two cores shared with the attacker, the test and
#: whatever else runs. Every probe must still be answered, within ``PROBE_TIMEOUT``.
SLOW_SHARE = 0.05
PROBE_TIMEOUT = 2.0


class Prober:
    """Asks the broker for its health every ``interval`` seconds on a thread of its own,
    and keeps how long each answer took (``PROBE_TIMEOUT`` for one that never came)."""

    def __init__(self, endpoint: str, interval: float = 0.05) -> None:
        self.endpoint = endpoint
        self.interval = interval
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        client = Client(self.endpoint, timeout=PROBE_TIMEOUT)
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    client.health(timeout=PROBE_TIMEOUT)
                except SchedulerError:
                    self.failures += 1
                    self.latencies.append(PROBE_TIMEOUT)
                    client.close()
                    client = Client(self.endpoint, timeout=PROBE_TIMEOUT)
                else:
                    self.latencies.append(time.monotonic() - began)
                self._stop.wait(self.interval)
        finally:
            client.close()

    def summary(self) -> str:
        lat = sorted(self.latencies)
        if not lat:
            return "no probes"
        p50 = statistics.median(lat)
        p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))]
        return (
            f"{len(lat)} probes: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
            f"max {lat[-1] * 1000:.1f} ms, {self.failures} unanswered"
        )

    def check(self) -> None:
        """Every probe answered, and all but ``SLOW_SHARE`` of them within ``PROBE_DEADLINE``
        (the figures are printed: ``make attack`` shows them)."""
        print(f"health during the attack: {self.summary()}")
        assert len(self.latencies) >= 3, self.summary()
        slow = sum(1 for latency in self.latencies if latency > PROBE_DEADLINE)
        assert self.failures == 0 and slow <= SLOW_SHARE * len(self.latencies), self.summary()


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Peer:
    """A DEALER that sends whatever it is given and reads only when asked."""

    def __init__(self, endpoint: str, identity: bytes | None = None) -> None:
        self.socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        if identity is not None:
            self.socket.setsockopt(zmq.IDENTITY, identity)
        self.socket.connect(endpoint)

    def send(self, command: Command, body: dict[str, Any]) -> None:
        self.socket.send_multipart(pack(command, body))

    def request(self, req: int, op: str, args: dict[str, Any]) -> None:
        self.send(Command.REQUEST, {"req": req, "op": op, "args": args})

    def close(self) -> None:
        self.socket.close(linger=0)
