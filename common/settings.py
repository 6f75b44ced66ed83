"""Configuration in one place: every setting has a default, a flag and an environment variable.

Precedence: command-line flag, then environment variable ``ZMQS_<NAME>``, then default.
Each setting names the commands that take it (``zmq-broker``, ``zmq-worker``,
``zmq-api``); ``zmq-scheduler up`` takes them all and passes each on to the children
that use it. Every command gets its flags, their checks and ``--version`` from here
(``add_arguments`` and ``from_args``), so what a command accepts is what the table says;
``python -m common.settings`` prints that table, which the README shows.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import ipaddress
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from common.limits import ID_PATTERN, MAX_PAYLOAD

ENV_PREFIX = "ZMQS_"
#: Default retention of finished tasks, in days (the setting itself is in seconds).
RETENTION_DAYS = 7
#: The distribution whose version ``--version`` shows.
DISTRIBUTION = "zmq-scheduler"

#: The commands that take a subset of the settings, by the names the table shows.
BROKER, WORKER, API = "broker", "worker", "api"
#: The command-line client (``zmq-scheduler submit``, ``tasks``...: ``common.cli``).
CLIENT = "client"
#: ``zmq-scheduler up``, which takes every setting but the client's own.
UP = "up"
#: The store's fsync modes (SQLite's ``synchronous``); only ``full`` makes an
#: acknowledgement durable.
SYNC_MODES = ("full", "normal", "off")
#: How log lines are written (``common.logs``).
LOG_FORMATS = ("text", "json")
#: How a worker runs handlers (``worker.runner.POOLS``).
POOLS = ("thread", "process")
#: Flags a command names its own way: the broker binds the endpoint the others connect to.
RENAMED = {BROKER: {"broker": "--bind"}, UP: {"broker": "--broker-bind"}}


def _opt(default: Any, help: str, flag: str, *commands: str, note: str = "", **kwargs: Any) -> Any:
    """A setting: ``help`` and ``flag`` for the command line, the ``commands`` besides
    ``zmq-scheduler up`` that take it, and ``note`` for the README table."""
    metadata = {"help": help, "flag": flag, "commands": commands, "note": note}
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
    broker: str = _opt(
        "tcp://127.0.0.1:5555", "broker ZeroMQ endpoint", "--broker", BROKER, WORKER, API, CLIENT
    )
    #: Where the broker's state is: an SQLite file's path, ``memory:`` (nothing durable) or
    #: another backend's ``scheme://`` location (``broker.store.open_store``).
    data: str = _opt("./var/scheduler.db", "path of the SQLite store", "--data", BROKER)
    #: SQLite ``synchronous`` mode of the store: ``full`` (every commit fsynced, so
    #: acknowledged means durable), ``normal`` or ``off`` (benchmarks only: a crash may lose
    #: acknowledged work).
    sync: str = _opt(
        "full", "store fsync mode: full, normal or off (off for benchmarks only)", "--sync", BROKER
    )
    #: HOST:PORT the HTTP API listens on (``:8080`` means all interfaces). Only loopback
    #: while the API is open (no ``api_tokens``), unless ``insecure`` says otherwise.
    listen: str = _opt("127.0.0.1:8080", "HTTP listen address HOST:PORT", "--listen", API)
    #: File of the REST API's tokens, one ``TOKEN ROLE`` a line (``common.tokens``); empty:
    #: the API is open, anyone who reaches it may do anything.
    api_tokens: str = _opt(
        "", "file of API tokens and their roles (empty: the API is open)", "--api-tokens", API
    )
    #: Serve without authentication on an address other hosts can reach: the API without
    #: ``api_tokens`` on a non-loopback ``listen``, the broker in plain mode (no CURVE keys)
    #: on a non-loopback endpoint. A flag without a value.
    insecure: bool = _opt(
        False,
        "serve without authentication on a non-loopback address",
        "--insecure",
        BROKER,
        API,
    )

    # Local stack (zmq-scheduler up).
    #: Number of local zmq-worker processes started by ``zmq-scheduler up``.
    workers: int = _opt(2, "number of local workers", "--workers")
    #: Seconds ``zmq-scheduler up`` waits before restarting a child that died; doubled at
    #: each start-up failure in a row (a child that dies within 10 s of its start).
    restart_delay: float = _opt(
        1.0, "seconds before up restarts a child that died (doubling while it fails)",
        "--restart-delay",
    )  # fmt: skip
    #: Gunicorn worker processes serving the API.
    processes: int = _opt(2, "API server processes", "--processes", API)
    #: Connections one API process serves at once (gunicorn's ``worker_connections``); each
    #: is a greenlet, whether it waits for a request, a long-poll's answer or the broker.
    connections: int = _opt(10000, "API connections per process", "--connections", API)

    # Worker.
    #: Task slots per worker: how many tasks it runs at once.
    concurrency: int = _opt(0, "task slots per worker (0: CPU count)", "--concurrency", WORKER)
    #: Worker id; generated from host name and pid when empty. ``zmq-scheduler up`` gives
    #: its N workers this id followed by ``-1`` to ``-N``.
    worker_id: str = _opt("", "worker id (generated when empty)", "--id", WORKER)
    #: Extra capability tags, comma-separated, besides the handler names.
    capabilities: str = _opt("", "extra capability tags, comma-separated", "--capabilities", WORKER)
    #: CPUs the worker offers to tasks that ask for resources (0: not declared).
    cpu: float = _opt(0.0, "CPUs offered to tasks", "--cpu", WORKER)
    #: Memory in MB the worker offers (0: not declared).
    memory: float = _opt(0.0, "memory in MB offered to tasks", "--memory", WORKER)
    #: Disk in MB the worker offers (0: not declared).
    disk: float = _opt(0.0, "disk in MB offered to tasks", "--disk", WORKER)
    #: Modules to import for custom handlers, comma-separated (flag may repeat); looked for
    #: in the current directory too.
    handlers: str = _opt("", "modules with handlers to load (repeatable)", "--handlers", WORKER)
    #: How handlers run: ``thread`` (default) or ``process`` (CPU-bound handlers).
    pool: str = _opt("thread", "handler pool: thread or process", "--pool", WORKER)
    #: Seconds a stopping worker (SIGTERM, Ctrl-C) lets its runs finish before it gives the
    #: rest back; a second signal stops it at once.
    drain_grace: float = _opt(
        30.0, "seconds a stopping worker lets its runs finish", "--drain-grace", WORKER
    )
    #: Seconds a worker waits before reconnecting after a try that got no WELCOME; doubles
    #: with each such try (the first try after losing a broker is at once).
    reconnect_backoff: float = _opt(
        1.0, "first reconnect back-off of a worker in seconds", "--reconnect-backoff", WORKER
    )
    #: Longest wait between a worker's reconnect tries, in seconds.
    reconnect_backoff_max: float = _opt(
        32.0,
        "longest reconnect back-off of a worker in seconds",
        "--reconnect-backoff-max",
        WORKER,
    )

    # Liveness and timing.
    #: Seconds between broker pings to each ZeroMQ worker.
    ping_interval: float = _opt(1.0, "seconds between pings", "--ping-interval", BROKER)
    #: Pings a second to all ZeroMQ workers together: beyond this many workers online, each
    #: one's ping interval lengthens to workers / ping_rate seconds (docs/operations.md).
    ping_rate: float = _opt(
        1000.0, "pings a second to all workers together (longer intervals beyond)",
        "--ping-rate", BROKER,
    )  # fmt: skip
    #: Missed ping intervals after which a ZeroMQ worker is offline.
    liveness: int = _opt(
        3, "ping intervals of silence before a worker is offline", "--liveness", BROKER
    )
    #: Seconds without a heartbeat after which an HTTP worker is offline.
    http_liveness: float = _opt(
        15.0, "seconds of silence before an HTTP worker is offline", "--http-liveness", BROKER
    )
    #: First retry back-off in seconds; doubles with each attempt.
    retry_backoff: float = _opt(1.0, "first retry back-off in seconds", "--retry-backoff", BROKER)
    #: Longest retry back-off in seconds.
    retry_backoff_max: float = _opt(
        60.0, "longest retry back-off in seconds", "--retry-backoff-max", BROKER
    )
    #: Seconds past a task's timeout after which the broker itself expires the lease.
    timeout_grace: float = _opt(
        5.0, "seconds past a timeout before the broker expires a lease", "--timeout-grace", BROKER
    )

    #: Seconds finished tasks and their results are kept before they are pruned.
    retention: float = _opt(
        RETENTION_DAYS * 24 * 3600.0,
        "seconds finished tasks are kept",
        "--retention",
        BROKER,
        note=f"{RETENTION_DAYS} days",
    )
    #: Finished tasks kept at most, the oldest pruned first beyond it (0: no limit).
    max_finished: int = _opt(
        0,
        "finished tasks kept at most, oldest pruned first (0: no limit but --retention)",
        "--max-finished",
        BROKER,
        note="no limit",
    )

    #: Seconds an offline worker stays listed (``GET /workers``) before it is forgotten.
    worker_retention: float = _opt(
        3600.0,
        "seconds an offline worker stays listed",
        "--worker-retention",
        BROKER,
        note="1 hour",
    )
    #: Largest ``args`` of a task and largest result of a run, in bytes, through either door
    #: (a direct client, the HTTP API): a larger one is refused (413), a larger result makes
    #: its run fail.
    max_payload: int = _opt(
        8 * 1024 * 1024,
        "largest task args or result in bytes",
        "--max-payload",
        BROKER,
        note="8 MiB",
    )

    # API.
    #: Largest accepted request body in bytes.
    max_body: int = _opt(8 * 1024 * 1024, "largest request body in bytes", "--max-body", API)
    #: Seconds the API (or a client) waits for a broker reply.
    request_timeout: float = _opt(
        5.0, "seconds to wait for a broker reply", "--request-timeout", API, CLIENT
    )
    #: Seconds a connection has to send a request's line and headers, from its opening or
    #: its previous answer: slow and idle connections are closed after it. Whole seconds,
    #: as gunicorn's ``keepalive``, which it is.
    header_timeout: int = _opt(10, "seconds to send a request's headers", "--header-timeout", API)
    #: Seconds a request has to send its body once its headers are in (else a 408), and an
    #: answer has to be taken by its client.
    body_timeout: float = _opt(10.0, "seconds to send a request's body", "--body-timeout", API)

    # Command-line client.
    #: The REST API's URL the command-line client goes through (``http://127.0.0.1:8080``);
    #: empty: it talks to the broker (``broker``) directly.
    api: str = _opt("", "REST API URL the client uses instead of the broker", "--api", CLIENT)
    #: The bearer token the command-line client shows the REST API (one of its
    #: ``--api-tokens``); better given in the environment than on a command line.
    token: str = _opt("", "token the client shows the REST API", "--token", CLIENT)

    # Security (docs/security.md).
    #: This process's own CURVE certificate, the secret one (``zmq-scheduler keygen``): the
    #: broker's turns CURVE on; a worker's or client's is how the broker knows it.
    curve_secret: str = _opt(
        "", "own secret CURVE certificate file", "--curve-secret", BROKER, WORKER, API, CLIENT
    )
    #: Folder of the public CURVE certificates the broker lets in, each naming a role; read
    #: again on SIGHUP and when the folder changes.
    curve_allow: str = _opt(
        "", "folder of public CURVE certificates let in", "--curve-allow", BROKER
    )
    #: The broker's public CURVE certificate, which workers and clients check it by.
    curve_server_key: str = _opt(
        "", "broker's public CURVE certificate file", "--curve-server-key", WORKER, API, CLIENT
    )
    #: ``zmq-scheduler up`` makes CURVE keys (under the data folder's ``keys/``) for its
    #: broker, workers, API and one client, and starts its children with them.
    secure: bool = _opt(False, "run the local stack with CURVE keys", "--secure")

    #: Logging level.
    log_level: str = _opt("INFO", "logging level", "--log-level", BROKER, WORKER, API)
    #: How log lines are written: ``text`` for people, or ``json``, one object a line with
    #: the time, level, logger, message and the event's fields (task and worker ids...).
    log_format: str = _opt(
        "text", "log line format: text or json", "--log-format", BROKER, WORKER, API
    )

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


class SettingError(ValueError):
    """A setting's value that cannot be used, named by its flag and variable."""


#: Every setting's field, by name.
_FIELDS = {f.name: f for f in fields(Settings)}


def _flag(name: str, flags: Mapping[str, str] | None) -> str:
    """A setting's flag, as a command that renames some (``flags``) calls it."""
    return (flags or {}).get(name, _FIELDS[name].metadata["flag"])


def _source(name: str, flags: Mapping[str, str] | None) -> str:
    """How a setting is given: ``--flag (ZMQS_NAME)``."""
    return f"{_flag(name, flags)} ({env_name(name)})"


#: What the environment may say for a yes-or-no setting, and what it means.
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False, "": False}  # fmt: skip


def _convert(name: str, kind: Any, value: Any, flags: Mapping[str, str] | None = None) -> Any:
    if kind in ("bool", bool):
        if isinstance(value, bool):  # a flag given, which has no value
            return value
        if value.strip().lower() not in _BOOLEANS:
            raise SettingError(f"{_source(name, flags)}: {value!r} is not one of 1, 0, true, false")
        return _BOOLEANS[value.strip().lower()]
    try:
        if kind in ("int", int):
            return int(value)
        if kind in ("float", float):
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
    except ValueError:
        what = "a whole number" if kind in ("int", int) else "a finite number"
        raise SettingError(f"{_source(name, flags)}: {value!r} is not {what}") from None
    return value


def add_arguments(
    parser: argparse.ArgumentParser,
    names: Sequence[str],
    flags: Mapping[str, str] | None = None,
) -> None:
    """Add the flags of the named settings; ``flags`` renames some for this command."""
    for name in names:
        f = _FIELDS[name]
        flag = _flag(name, flags)
        default = f.default if f.default is not MISSING else None
        help_text = f"{f.metadata['help']} (env {env_name(name)}, default {default!r})"
        if name == "handlers":
            parser.add_argument(flag, dest=name, action="append", default=None, help=help_text)
        elif f.type in ("bool", bool):
            help_text = f"{f.metadata['help']} (env {env_name(name)}=1)"
            parser.add_argument(flag, dest=name, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)


def _load(
    args: argparse.Namespace | None,
    environ: Mapping[str, str],
    flags: Mapping[str, str] | None = None,
) -> Settings:
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if env_name(f.name) in environ:
            values[f.name] = _convert(f.name, f.type, environ[env_name(f.name)], flags)
        flag_value = getattr(args, f.name, None) if args is not None else None
        if flag_value is not None:
            if isinstance(flag_value, list):
                flag_value = ",".join(flag_value)
            values[f.name] = _convert(f.name, f.type, flag_value, flags)
    return replace(Settings(), **values)


def load(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build settings from defaults, then the environment, then parsed flags, then overrides.

    A value that is not a number where one is needed stops the program with a message
    naming it (SystemExit); commands use ``from_args``, which checks every value.
    """
    try:
        settings = _load(args, os.environ if environ is None else environ)
    except SettingError as exc:
        raise SystemExit(str(exc)) from None
    return replace(settings, **overrides)


def names_for(command: str) -> list[str]:
    """The settings ``command`` takes (``BROKER``, ``WORKER``, ``API``, ``CLIENT``, or
    ``UP``: all but those only the client takes)."""
    return [
        f.name
        for f in fields(Settings)
        if command in f.metadata["commands"]
        or (command == UP and f.metadata["commands"] != (CLIENT,))
    ]


def version() -> str:
    """The installed package's version, which ``--version`` shows."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def add_command(parser: argparse.ArgumentParser, command: str) -> None:
    """Give ``parser`` the flags of every setting ``command`` takes, and ``--version``."""
    add_arguments(parser, names_for(command), RENAMED.get(command))
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")


def command_line(
    prog: str, description: str, command: str, argv: Sequence[str] | None
) -> tuple[argparse.ArgumentParser, Settings]:
    """Parse ``argv`` as ``prog``, which takes the settings of ``command``: its parser (for
    errors found later) and its settings, checked."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"{description} Every flag can be set from the environment instead "
        "(ZMQS_<NAME>); a flag wins.",
    )
    add_command(parser, command)
    return parser, from_args(parser, parser.parse_args(argv), command)


def from_args(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    command: str,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """The settings of ``command`` from its parsed flags and the environment, every one
    checked: a bad value is a usage error (``parser.error``, exit status 2) that names it,
    raised before the command starts anything."""
    flags = RENAMED.get(command)
    try:
        settings = _load(args, os.environ if environ is None else environ, flags)
    except SettingError as exc:
        parser.error(str(exc))
    found = problems(settings, names_for(command), flags)
    if found:
        parser.error("; ".join(found))
    return settings


def to_argv(settings: Settings, command: str) -> list[str]:
    """The flags that give ``command`` these settings, each it takes (empty ones left out:
    they are the default, or the environment it inherits says the same)."""
    argv: list[str] = []
    for name in names_for(command):
        value = getattr(settings, name)
        if isinstance(value, bool):  # a flag without a value, given when true
            argv += [_flag(name, RENAMED.get(command))] if value else []
        elif value != "":
            argv += [_flag(name, RENAMED.get(command)), str(value)]
    return argv


#: A ZeroMQ endpoint: ``transport://address``.
_ENDPOINT = re.compile(r"[a-z]+://\S+")
#: An HTTP URL with a host and no query: ``http[s]://host[:port][/path]``.
_URL = re.compile(r"https?://[^/?#\s]+(/[^?#\s]*)?")
#: A dotted module name.
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _listen_ok(listen: str) -> bool:
    host, sep, port = listen.rpartition(":")
    return bool(sep) and port.isdigit() and 0 < int(port) < 65536 and " " not in host


def is_loopback(listen: str) -> bool:
    """Whether ``HOST:PORT`` listens on loopback alone: ``localhost``, ``127.0.0.0/8`` or
    ``[::1]``. An empty host is every interface; a host name other than ``localhost`` may
    resolve to anything, so it is not."""
    host = listen.rpartition(":")[0].removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposed_open(settings: Settings) -> bool:
    """Whether these settings would serve the API with no tokens where other hosts reach
    it, which only ``insecure`` allows."""
    return not settings.api_tokens and not settings.insecure and not is_loopback(settings.listen)


#: What each setting must be: (name, test, what the test asks for).
_RULES: list[tuple[str, Callable[[Settings], bool], str]] = [
    ("broker", lambda s: bool(_ENDPOINT.fullmatch(s.broker)),
     "must be a ZeroMQ endpoint such as tcp://127.0.0.1:5555"),
    ("data", lambda s: s.data != "", "must not be empty"),
    ("sync", lambda s: s.sync.lower() in SYNC_MODES, f"must be one of {', '.join(SYNC_MODES)}"),
    ("listen", lambda s: _listen_ok(s.listen),
     "must be HOST:PORT with a port from 1 to 65535 (:8080 for every interface)"),
    ("listen", lambda s: not _listen_ok(s.listen) or not exposed_open(s),
     "must be a loopback address such as 127.0.0.1:8080 while the API is open (no "
     "--api-tokens), unless --insecure is given"),
    ("workers", lambda s: s.workers >= 0, "must be >= 0"),
    ("restart_delay", lambda s: s.restart_delay > 0, "must be > 0"),
    ("processes", lambda s: s.processes >= 1, "must be >= 1"),
    ("connections", lambda s: s.connections >= 1, "must be >= 1"),
    ("concurrency", lambda s: s.concurrency >= 0, "must be >= 0 (0: CPU count)"),
    ("worker_id", lambda s: s.worker_id == "" or bool(ID_PATTERN.fullmatch(s.worker_id)),
     "must be 1 to 128 of A-Za-z0-9._:-"),
    ("cpu", lambda s: s.cpu >= 0, "must be >= 0"),
    ("memory", lambda s: s.memory >= 0, "must be >= 0"),
    ("disk", lambda s: s.disk >= 0, "must be >= 0"),
    ("handlers", lambda s: all(_MODULE.fullmatch(m) for m in split_list(s.handlers)),
     "must be module names such as myapp.tasks, comma-separated"),
    ("pool", lambda s: s.pool in POOLS, f"must be one of {', '.join(POOLS)}"),
    ("drain_grace", lambda s: s.drain_grace >= 0, "must be >= 0"),
    ("reconnect_backoff", lambda s: s.reconnect_backoff > 0, "must be > 0"),
    ("reconnect_backoff_max", lambda s: s.reconnect_backoff_max >= s.reconnect_backoff,
     "must be at least --reconnect-backoff"),
    ("ping_interval", lambda s: s.ping_interval > 0, "must be > 0"),
    ("liveness", lambda s: s.liveness >= 1, "must be >= 1"),
    ("ping_rate", lambda s: s.ping_rate > 0, "must be > 0"),
    ("http_liveness", lambda s: s.http_liveness > 0, "must be > 0"),
    ("retry_backoff", lambda s: s.retry_backoff >= 0, "must be >= 0"),
    ("retry_backoff_max", lambda s: s.retry_backoff_max >= s.retry_backoff,
     "must be at least --retry-backoff"),
    ("timeout_grace", lambda s: s.timeout_grace >= 0, "must be >= 0"),
    ("retention", lambda s: s.retention >= 0, "must be >= 0"),
    ("max_finished", lambda s: s.max_finished >= 0, "must be >= 0"),
    ("max_body", lambda s: s.max_body >= 1, "must be >= 1"),
    ("max_payload", lambda s: 1 <= s.max_payload <= MAX_PAYLOAD, f"must be 1 to {MAX_PAYLOAD}"),
    ("worker_retention", lambda s: s.worker_retention >= 0, "must be >= 0"),
    ("request_timeout", lambda s: s.request_timeout > 0, "must be > 0"),
    ("api", lambda s: s.api == "" or bool(_URL.fullmatch(s.api)),
     "must be the API's URL such as http://127.0.0.1:8080"),
    ("header_timeout", lambda s: s.header_timeout >= 1, "must be >= 1"),
    ("body_timeout", lambda s: s.body_timeout > 0, "must be > 0"),
    ("log_level", lambda s: s.log_level.upper() in logging.getLevelNamesMapping(),
     "must be a logging level such as DEBUG, INFO or WARNING"),
    ("log_format", lambda s: s.log_format in LOG_FORMATS,
     f"must be one of {', '.join(LOG_FORMATS)}"),
]  # fmt: skip


def problems(
    settings: Settings, names: Sequence[str], flags: Mapping[str, str] | None = None
) -> list[str]:
    """What is wrong with the named settings, one message each, naming its flag and
    variable; empty when nothing is."""
    return [
        f"{_source(name, flags)} {wants}, got {getattr(settings, name)!r}"
        for name, test, wants in _RULES
        if name in names and not test(settings)
    ]


def split_list(value: str) -> list[str]:
    """Split a comma-separated setting into its non-empty parts."""
    return [part.strip() for part in value.split(",") if part.strip()]


def table() -> str:
    """The settings table of the README, which a test holds to this output."""
    rows = [
        "| setting | flag | environment | default | taken by |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in fields(Settings):
        default = f"`{f.default}`" if f.default != "" else "empty"
        if isinstance(f.default, bool):
            default = "on" if f.default else "off"
        if f.metadata["note"]:
            default += f" ({f.metadata['note']})"
        commands = ", ".join(f.metadata["commands"]) or f"{UP} only"
        rows.append(
            f"| {f.metadata['help']} | `{f.metadata['flag']}` | `{env_name(f.name)}` "
            f"| {default} | {commands} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
