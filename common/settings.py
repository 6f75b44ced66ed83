"""Configuration in one place: every setting has a default, a flag and an environment variable.

Precedence: command-line flag, then environment variable ``ZMQS_<NAME>``, then default.
Each command (``zmq-broker``, ``zmq-worker``, ``zmq-api``, ``zmq-scheduler up``) exposes
the subset of settings it uses; ``python -m common.settings`` prints the full table.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

ENV_PREFIX = "ZMQS_"
#: Default retention of finished tasks, in days (the setting itself is in seconds).
RETENTION_DAYS = 7


def _opt(default: Any, help: str, flag: str, note: str = "", **kwargs: Any) -> Any:
    """A setting: ``help`` and ``flag`` for the command line, ``note`` for the README table."""
    metadata = {"help": help, "flag": flag, "note": note}
    if "default_factory" in kwargs:
        return field(default_factory=kwargs["default_factory"], metadata=metadata)
    return field(default=default, metadata=metadata)


def _cpu_count() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    """All settings of all commands."""

    # Where things are.
    #: ZeroMQ endpoint the broker binds (broker) or connects to (workers, API, clients).
    broker: str = _opt("tcp://127.0.0.1:5555", "broker ZeroMQ endpoint", "--broker")
    #: Where the broker's state is: an SQLite file's path, ``memory:`` (nothing durable) or
    #: another backend's ``scheme://`` location (``broker.store.open_store``).
    data: str = _opt("./var/scheduler.db", "path of the SQLite store", "--data")
    #: SQLite ``synchronous`` mode of the store: ``full`` (every commit fsynced, so
    #: acknowledged means durable), ``normal`` or ``off`` (benchmarks only: a crash may lose
    #: acknowledged work).
    sync: str = _opt(
        "full", "store fsync mode: full, normal or off (off for benchmarks only)", "--sync"
    )
    #: HOST:PORT the HTTP API listens on (``:8080`` means all interfaces).
    listen: str = _opt(":8080", "HTTP listen address HOST:PORT", "--listen")

    # Local stack (zmq-scheduler up).
    #: Number of local zmq-worker processes started by ``zmq-scheduler up``.
    workers: int = _opt(2, "number of local workers", "--workers")
    #: Gunicorn worker processes serving the API.
    processes: int = _opt(2, "API server processes", "--processes")
    #: Threads per API process (each long-poll holds one).
    threads: int = _opt(16, "API threads per process", "--threads")

    # Worker.
    #: Task slots per worker: how many tasks it runs at once.
    concurrency: int = _opt(0, "task slots per worker (0: CPU count)", "--concurrency")
    #: Worker id; generated from host name and pid when empty.
    worker_id: str = _opt("", "worker id (generated when empty)", "--id")
    #: Extra capability tags, comma-separated, besides the handler names.
    capabilities: str = _opt("", "extra capability tags, comma-separated", "--capabilities")
    #: CPUs the worker offers to tasks that ask for resources (0: not declared).
    cpu: float = _opt(0.0, "CPUs offered to tasks", "--cpu")
    #: Memory in MB the worker offers (0: not declared).
    memory: float = _opt(0.0, "memory in MB offered to tasks", "--memory")
    #: Disk in MB the worker offers (0: not declared).
    disk: float = _opt(0.0, "disk in MB offered to tasks", "--disk")
    #: Modules to import for custom handlers, comma-separated (flag may repeat).
    handlers: str = _opt("", "modules with handlers to load (repeatable)", "--handlers")
    #: How handlers run: ``thread`` (default) or ``process`` (CPU-bound handlers).
    pool: str = _opt("thread", "handler pool: thread or process", "--pool")
    #: Seconds a stopping worker (SIGTERM, Ctrl-C) lets its runs finish before it gives the
    #: rest back; a second signal stops it at once.
    drain_grace: float = _opt(
        30.0, "seconds a stopping worker lets its runs finish", "--drain-grace"
    )
    #: Seconds a worker waits before reconnecting after a try that got no WELCOME; doubles
    #: with each such try (the first try after losing a broker is at once).
    reconnect_backoff: float = _opt(
        1.0, "first reconnect back-off of a worker in seconds", "--reconnect-backoff"
    )
    #: Longest wait between a worker's reconnect tries, in seconds.
    reconnect_backoff_max: float = _opt(
        32.0, "longest reconnect back-off of a worker in seconds", "--reconnect-backoff-max"
    )

    # Liveness and timing.
    #: Seconds between broker pings to each ZeroMQ worker.
    ping_interval: float = _opt(1.0, "seconds between pings", "--ping-interval")
    #: Missed ping intervals after which a ZeroMQ worker is offline.
    liveness: int = _opt(3, "ping intervals of silence before a worker is offline", "--liveness")
    #: Seconds without a heartbeat after which an HTTP worker is offline.
    http_liveness: float = _opt(
        15.0, "seconds of silence before an HTTP worker is offline", "--http-liveness"
    )
    #: First retry back-off in seconds; doubles with each attempt.
    retry_backoff: float = _opt(1.0, "first retry back-off in seconds", "--retry-backoff")
    #: Longest retry back-off in seconds.
    retry_backoff_max: float = _opt(
        60.0, "longest retry back-off in seconds", "--retry-backoff-max"
    )
    #: Seconds past a task's timeout after which the broker itself expires the lease.
    timeout_grace: float = _opt(
        5.0, "seconds past a timeout before the broker expires a lease", "--timeout-grace"
    )

    #: Seconds finished tasks and their results are kept before they are pruned.
    retention: float = _opt(
        RETENTION_DAYS * 24 * 3600.0,
        "seconds finished tasks are kept",
        "--retention",
        note=f"{RETENTION_DAYS} days",
    )

    # API.
    #: Largest accepted request body in bytes.
    max_body: int = _opt(8 * 1024 * 1024, "largest request body in bytes", "--max-body")
    #: Seconds the API (or a client) waits for a broker reply.
    request_timeout: float = _opt(5.0, "seconds to wait for a broker reply", "--request-timeout")

    #: Logging level.
    log_level: str = _opt("INFO", "logging level", "--log-level")

    @property
    def slots(self) -> int:
        """Effective task slots of a worker."""
        return self.concurrency if self.concurrency > 0 else _cpu_count()

    @property
    def worker_window(self) -> float:
        """Seconds of silence after which a ZeroMQ worker is offline."""
        return self.ping_interval * self.liveness


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _convert(name: str, kind: Any, value: str) -> Any:
    try:
        if kind in ("int", int):
            return int(value)
        if kind in ("float", float):
            return float(value)
    except ValueError:
        raise SystemExit(f"setting {name}: {value!r} is not a number") from None
    return value


def add_arguments(
    parser: argparse.ArgumentParser,
    names: Sequence[str],
    flags: Mapping[str, str] | None = None,
) -> None:
    """Add the flags of the named settings; ``flags`` renames some for this command."""
    by_name = {f.name: f for f in fields(Settings)}
    for name in names:
        f = by_name[name]
        flag = (flags or {}).get(name, f.metadata["flag"])
        default = f.default if f.default is not MISSING else None
        help_text = f"{f.metadata['help']} (env {env_name(name)}, default {default!r})"
        if name == "handlers":
            parser.add_argument(flag, dest=name, action="append", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)


def load(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build settings from defaults, then the environment, then parsed flags, then overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if env_name(f.name) in env:
            values[f.name] = _convert(f.name, f.type, env[env_name(f.name)])
        flag_value = getattr(args, f.name, None) if args is not None else None
        if flag_value is not None:
            if isinstance(flag_value, list):
                flag_value = ",".join(flag_value)
            values[f.name] = _convert(f.name, f.type, flag_value)
    values.update(overrides)
    return replace(Settings(), **values)


def split_list(value: str) -> list[str]:
    """Split a comma-separated setting into its non-empty parts."""
    return [part.strip() for part in value.split(",") if part.strip()]


def table() -> str:
    """The settings table of the README, which a test holds to this output."""
    rows = ["| setting | flag | environment | default |", "| --- | --- | --- | --- |"]
    for f in fields(Settings):
        default = f"`{f.default}`" if f.default != "" else "empty"
        if f.metadata["note"]:
            default += f" ({f.metadata['note']})"
        rows.append(
            f"| {f.metadata['help']} | `{f.metadata['flag']}` | `{env_name(f.name)}` | {default} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
