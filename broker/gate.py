"""The broker's ZAP handler: which CURVE keys get in, and the ``User-Id`` each gets.

``Gate`` is pyzmq's ``ThreadAuthenticator`` on the broker's context: ZeroMQ asks it,
during each connection's handshake, whether the client's public key is allowed, and
gives every message of an allowed connection the ``User-Id`` it returns, ``ROLE:NAME``
from the key's certificate in the allow folder (``broker.roles`` reads it back). The
folder is read again when ``reload`` is asked (SIGHUP) or its modification time
changes, polled every ``POLL_SECONDS`` by a thread of its own. A key removed from the
folder is refused to new connections; a connection made before stays, as ZeroMQ
authenticates only at the handshake (restart the broker to cut it).

This module must never touch the broker's socket or its state: it answers ZAP requests
in its own thread and reads files.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from common.curve import PUBLIC_SUFFIX, read_cert

log = logging.getLogger(__name__)

#: Seconds between two looks at the allow folder's modification time.
POLL_SECONDS = 1.0


def allowed_keys(folder: str | os.PathLike[str]) -> dict[bytes, str]:
    """Public key (Z85) -> ``ROLE:NAME`` of every certificate ``NAME.key`` in ``folder``;
    a file that is not a certificate is skipped, and logged."""
    keys: dict[bytes, str] = {}
    for path in sorted(Path(folder).glob("*" + PUBLIC_SUFFIX)):
        try:
            cert = read_cert(path)
        except (OSError, ValueError) as exc:
            log.warning("skipped %s: not a certificate (%s)", path, exc)
            continue
        keys[cert.public] = f"{cert.role}:{cert.name}"
    return keys


class Gate(ThreadAuthenticator):
    """ZAP for CURVE: the keys of one folder allowed, each known by its role and name."""

    def __init__(self, context: zmq.Context[Any], folder: str) -> None:
        super().__init__(context)
        self.folder = folder
        #: Public key (Z85) -> User-Id; replaced whole by each reload, read by the ZAP thread.
        self._users: dict[bytes, str] = {}
        self._reload = threading.Event()
        self._stop = threading.Event()
        self._mtime: int | None = None
        self._watcher = threading.Thread(target=self._watch, name="curve-allow", daemon=True)

    def start(self) -> None:
        """Read the folder, then answer ZAP requests and watch the folder."""
        self._read()
        super().start()
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join()
        super().stop()

    def reload(self) -> None:
        """Read the folder again soon (safe from a signal handler: it sets a flag)."""
        self._reload.set()

    def curve_user_id(self, client_public_key: bytes) -> str:
        """``ROLE:NAME`` of an allowed key (the ZAP thread asks once per connection)."""
        return self._users.get(zmq.utils.z85.encode(client_public_key), ":")

    def _read(self) -> None:
        try:
            self._mtime = os.stat(self.folder).st_mtime_ns
            users = allowed_keys(self.folder)
        except OSError as exc:
            log.error("cannot read the CURVE allow folder %s: %s; no key allowed", self.folder, exc)
            users = {}
        # The allow list pyzmq's handler checks, then the names: both are swapped whole.
        self.certs["*"] = dict.fromkeys(users, True)
        self._users = users
        log.info("CURVE: %d keys allowed from %s", len(users), self.folder)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._reload.wait(POLL_SECONDS)
            if self._stop.is_set():
                return
            try:
                changed = os.stat(self.folder).st_mtime_ns != self._mtime
            except OSError:
                changed = self._mtime is not None
            if self._reload.is_set() or changed:
                self._reload.clear()
                self._read()
