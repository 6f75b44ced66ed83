"""Key folders: ``zmq-scheduler keygen``, and the keys of a ``zmq-scheduler up --secure``.

``keygen`` writes one key pair (``common.curve.keygen``). A secure local stack keeps its
keys in ``keys/`` beside its store: a pair each for the broker, every local worker
(named by its worker id), the API (admin: it makes the HTTP workers' requests and checks
their tokens itself) and one client for the user; ``keys/allow/`` holds the public
certificates the broker lets in. Pairs made before are kept, so a client key handed out
stays good across restarts. This module starts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from common import settings as config
from common.curve import BROKER_NAME, PUBLIC_SUFFIX, SECRET_SUFFIX, Role, keygen
from common.settings import Settings

#: Where a stack whose store is not a file keeps its keys.
DEFAULT_FOLDER = Path("var") / "keys"
#: The names of the API's and the user's keys in a local stack.
API_NAME, CLIENT_NAME = "api", "client"


def add_keygen(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``keygen`` subcommand's parser."""
    parser = sub.add_parser(
        "keygen",
        help="write a CURVE key pair",
        description="Write a CURVE key pair in DIR: NAME.key, the public certificate (copy "
        "it to the broker's --curve-allow folder, or for the broker's own pair to every "
        "worker and client), and NAME.key_secret, readable by you only. A worker's NAME is "
        "its worker id; the broker's pair is --name broker with no role.",
    )
    parser.add_argument("folder", metavar="DIR", help="folder to write the pair in")
    parser.add_argument("--name", default=BROKER_NAME, help="the key's name (default: broker)")
    parser.add_argument(
        "--role", choices=[role.value for role in Role], default=None, help="what the key may do"
    )


def run_keygen(args: argparse.Namespace) -> int:
    try:
        public, secret = keygen(args.folder, args.name, Role(args.role) if args.role else None)
    except (OSError, ValueError) as exc:
        print(f"zmq-scheduler keygen: {exc}", file=sys.stderr)
        return 1
    print(f"public: {public}\nsecret: {secret}")
    return 0


def stack_folder(settings: Settings) -> Path:
    """The keys folder of a local stack: ``keys/`` beside its SQLite store."""
    data = settings.data
    if data.startswith("memory:") or "://" in data:
        return DEFAULT_FOLDER
    return Path(data).parent / "keys"


def worker_ids(settings: Settings) -> list[str]:
    """The ids of a secure stack's local workers: a key each needs a known name."""
    base = settings.worker_id or "local"
    return [f"{base}-{i}" for i in range(1, settings.workers + 1)]


def _pair(folder: Path, name: str, role: Role | None) -> Path:
    """The secret certificate of NAME in ``folder``, made if missing."""
    secret = folder / (name + SECRET_SUFFIX)
    if not secret.exists():
        (folder / (name + PUBLIC_SUFFIX)).unlink(missing_ok=True)
        keygen(folder, name, role)
    return secret


def secure_stack(settings: Settings) -> tuple[Settings, dict[str, Settings]]:
    """Make (or reuse) the keys of a secure local stack; returns the settings with the
    broker's keys and, by child name (``api``, ``worker-N``), the settings of each other
    child with its own."""
    folder = stack_folder(settings)
    allow = folder / "allow"
    allow.mkdir(parents=True, exist_ok=True)
    allow.chmod(0o700)
    _pair(folder, BROKER_NAME, None)
    server_key = str(folder / (BROKER_NAME + PUBLIC_SUFFIX))
    named = [(API_NAME, Role.ADMIN), (CLIENT_NAME, Role.CLIENT)]
    named += [(worker_id, Role.WORKER) for worker_id in worker_ids(settings)]
    secrets = {name: _pair(folder, name, role) for name, role in named}
    for old in allow.glob("*" + PUBLIC_SUFFIX):
        if old.name.removesuffix(PUBLIC_SUFFIX) not in secrets:
            old.unlink()
    for name in secrets:
        shutil.copyfile(folder / (name + PUBLIC_SUFFIX), allow / (name + PUBLIC_SUFFIX))
    broker = replace(
        settings,
        curve_secret=str(folder / (BROKER_NAME + SECRET_SUFFIX)),
        curve_allow=str(allow),
    )
    children = {
        "api": replace(settings, curve_server_key=server_key, curve_secret=str(secrets[API_NAME]))
    }
    for i, worker_id in enumerate(worker_ids(settings), 1):
        children[f"worker-{i}"] = replace(
            settings,
            worker_id=worker_id,
            curve_server_key=server_key,
            curve_secret=str(secrets[worker_id]),
        )
    return broker, children


def client_hint(settings: Settings) -> str:
    """Where a secure stack's client key is, and how to use it."""
    folder = stack_folder(settings)
    secret = folder / (CLIENT_NAME + SECRET_SUFFIX)
    server = folder / (BROKER_NAME + PUBLIC_SUFFIX)
    return (
        f"CURVE on: the client key is {secret}, the broker's public key {server} (give "
        f"{config.env_name('curve_secret')}={secret} and "
        f"{config.env_name('curve_server_key')}={server}, or "
        "Client(..., curve=ClientKeys.load(server_key, secret)))"
    )
