"""Why a broker's endpoint cannot be reached, when the reason is that its host name does not
resolve.

ZeroMQ resolves the host of a ``tcp://host:port`` endpoint in its own I/O thread and says
nothing when it fails: the connection is never made, and a caller sees only a broker that
does not answer. ``unresolved`` looks the host up with ``socket.getaddrinfo``, so that a
caller that got no answer (the client's ``Unavailable``, a worker that lost its broker)
can say that the name does not resolve rather than only that nothing came.

A lookup may take as long as the resolver does; this module must never hold its caller
longer than ``LOOKUP_TIMEOUT``, and it is called only once something has failed.
"""

from __future__ import annotations

import socket
import threading

#: Seconds ``unresolved`` waits for the resolver before it gives up saying nothing.
LOOKUP_TIMEOUT = 0.5


def tcp_host(endpoint: str) -> str | None:
    """The host of a ``tcp://`` endpoint, without an IPv6 address's brackets; None for
    another transport, a wildcard or an endpoint without a port."""
    scheme, sep, rest = endpoint.partition("://")
    if scheme != "tcp" or not sep:
        return None
    # ZeroMQ takes a source address first: tcp://source;host:port.
    host, sep, _ = rest.rpartition(";")[2].rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or host == "*":
        return None
    return host


def unresolved(endpoint: str, timeout: float = LOOKUP_TIMEOUT) -> str | None:
    """Why the host of ``endpoint`` does not resolve (``host 'x' does not resolve (...)``),
    or None: it resolves, there is no host name to resolve, or the resolver took longer
    than ``timeout`` seconds."""
    host = tcp_host(endpoint)
    if host is None:
        return None
    found: list[str | None] = []
    # In a thread of its own, so that a resolver that does not answer holds no caller.
    lookup = threading.Thread(
        target=lambda: found.append(_lookup(host)), name="resolve-broker", daemon=True
    )
    lookup.start()
    lookup.join(timeout)
    return found[0] if found else None


def _lookup(host: str) -> str | None:
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"host {host!r} does not resolve ({exc.strerror})"
    except (UnicodeError, ValueError) as exc:  # an empty label, or one over 63 characters
        return f"host {host!r} does not resolve ({exc})"
    return None
