"""What every benchmark shares: starting a broker on a free port, and reporting figures.

Benchmarks print one JSON line per figure (``{"bench": ..., "metric": ..., "value": ...}``)
and a table at the end. Traffic stays on 127.0.0.1; every process started here is
killed by process group when the benchmark ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.client import Client
from common.errors import Unavailable

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def broker(*extra: str, data_dir: str | None = None) -> Iterator[str]:
    """A broker subprocess on a free port with its store in a temporary directory."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        store = os.path.join(tmp, "bench.db")
        argv = [sys.executable, "-m", "broker", "--bind", endpoint, "--data", store,
                "--log-level", "WARNING", *extra]  # fmt: skip
        proc = subprocess.Popen(argv, cwd=ROOT, start_new_session=True)
        try:
            with Client(endpoint, timeout=1.0) as client:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        client.health()
                        break
                    except Unavailable:
                        if time.monotonic() > deadline:
                            raise
            yield endpoint
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@dataclass
class Report:
    """Figures of one benchmark run."""

    bench: str
    rows: list[tuple[str, float, str]] = field(default_factory=list)

    def add(self, metric: str, value: float, unit: str) -> None:
        self.rows.append((metric, value, unit))
        line = {"bench": self.bench, "metric": metric, "value": round(value, 4), "unit": unit}
        print(json.dumps(line), flush=True)

    def table(self) -> str:
        width = max((len(m) for m, _, _ in self.rows), default=10)
        lines = [f"{self.bench}", "-" * (width + 24)]
        lines += [f"{m:<{width}}  {v:>12,.2f}  {u}" for m, v, u in self.rows]
        return "\n".join(lines)
