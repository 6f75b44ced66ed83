"""CURVE key files and roles: what ``zmq-scheduler keygen`` writes and every peer reads.

A key pair is two certificate files in ZeroMQ's format (``zmq.auth``): ``NAME.key``, the
public one, which is copied to the broker's allow folder (or, for the broker's own, to
every worker and client), and ``NAME.key_secret``, readable by its owner only, which
never leaves its host. Both carry the key's name and role in their metadata: the broker
knows a connection by the public key it authenticated, and acts on the role and name the
allow folder's certificate of that key gives (``broker.gate``). This module opens no
socket and reads no setting: it reads and writes files and sets socket options.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from common import settings
from common.limits import ID_PATTERN


class Role(StrEnum):
    """What a key may do at the broker (``broker.roles`` has the table)."""

    #: A worker: registers, reports and leaves only as the worker id that is its key's name.
    WORKER = "worker"
    #: A client: submits and inspects tasks and workers.
    CLIENT = "client"
    #: Everything, the operations the API makes for HTTP workers included.
    ADMIN = "admin"


#: The broker's own key pair, which names no role.
BROKER_NAME = "broker"
#: How the public and the secret certificate of NAME are named.
PUBLIC_SUFFIX, SECRET_SUFFIX = ".key", ".key_secret"


@dataclass(frozen=True)
class Cert:
    """A certificate file's content: the keys (Z85) and the metadata."""

    public: bytes
    secret: bytes | None
    name: str
    role: str


def keygen(
    folder: str | os.PathLike[str], name: str, role: Role | None = None
) -> tuple[Path, Path]:
    """Write a new key pair ``NAME.key`` and ``NAME.key_secret`` (mode 0600) in ``folder``,
    made if missing; returns their paths. Existing files are not overwritten."""
    if not ID_PATTERN.fullmatch(name):
        raise ValueError(f"key name {name!r} must be 1 to 128 of A-Za-z0-9._:-")
    directory = Path(folder)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / (name + PUBLIC_SUFFIX), directory / (name + SECRET_SUFFIX)
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists already")
    metadata = {"name": name, **({"role": role.value} if role is not None else {})}
    # The secret file is created empty with its mode first: the secret never sits in a file
    # others can read, even for a moment.
    os.close(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    zmq.auth.create_certificates(directory, name, metadata)
    os.chmod(secret, 0o600)
    # zmq.auth writes the metadata into the secret file only; the public one, which is
    # what the broker's allow folder holds, must say the role too.
    text = public.read_text()
    lines = "".join(f"    {key} = {value}\n" for key, value in metadata.items())
    public.write_text(text.replace("metadata\n", "metadata\n" + lines, 1))
    return public, secret


def read_cert(path: str | os.PathLike[str]) -> Cert:
    """A certificate file's keys and metadata (``ValueError``, ``OSError`` when unreadable).

    The name is the metadata's, else the file's name without its suffix; the role is
    empty when the metadata names none."""
    public, secret = zmq.auth.load_certificate(path)
    metadata: dict[str, str] = {}
    section = ""
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not raw[0].isspace():
            section = line
        elif section == "metadata" and "=" in line:
            key, _, value = line.partition("=")
            metadata[key.strip()] = value.strip().strip("\"'")
    stem = Path(path).name.removesuffix(SECRET_SUFFIX).removesuffix(PUBLIC_SUFFIX)
    return Cert(public, secret, metadata.get("name") or stem, metadata.get("role", ""))


@dataclass(frozen=True)
class ClientKeys:
    """What a worker or client needs to reach a CURVE broker: the broker's public key and
    its own pair (Z85)."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def load(cls, server_key: str, secret_file: str) -> ClientKeys | None:
        """From the two certificate files; None when neither is given (plain mode).

        Raises ``ValueError`` when only one is given or a file is not a certificate of the
        kind it should be, ``OSError`` when one cannot be read."""
        if not server_key and not secret_file:
            return None
        if not server_key or not secret_file:
            raise ValueError("CURVE needs both --curve-server-key and --curve-secret")
        own = read_cert(secret_file)
        if own.secret is None:
            raise ValueError(f"{secret_file} holds no secret key")
        return cls(read_cert(server_key).public, own.public, own.secret)

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` (before it connects) a CURVE client of the broker."""
        socket.curve_serverkey = self.server_public
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret


def serve(socket: zmq.Socket[Any], secret_file: str) -> None:
    """Make ``socket`` (before it binds) a CURVE server with the key pair of this file."""
    own = read_cert(secret_file)
    if own.secret is None:
        raise ValueError(f"{secret_file} holds no secret key")
    socket.curve_server = True
    socket.curve_publickey = own.public
    socket.curve_secretkey = own.secret


#: Endpoint transports that never leave the host.
_LOCAL_TRANSPORTS = ("ipc://", "inproc://")


def is_loopback(endpoint: str) -> bool:
    """Whether binding ``endpoint`` takes connections from this host only: ipc, inproc,
    or tcp on 127.0.0.0/8, ::1 or localhost (a wildcard or an interface name is not)."""
    if endpoint.startswith(_LOCAL_TRANSPORTS):
        return True
    return endpoint.startswith("tcp://") and settings.is_loopback(endpoint[len("tcp://") :])
