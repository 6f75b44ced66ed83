"""The REST API's tokens file: one ``TOKEN ROLE`` a line, read into a table of roles.

Roles are ``admin`` (everything), ``client`` (submit, read, cancel) and ``worker:ID``
(the calls of the HTTP worker ``ID`` alone); ``api.auth`` says which role may call what.
Blank lines and lines starting with ``#`` are skipped. A token is at least
``MIN_TOKEN_LENGTH`` visible ASCII characters, as an ``Authorization`` header carries it.

The table keeps only each token's SHA-256 digest, and a token is looked up by its digest,
so the time a lookup takes says nothing about how much of a token was right. This module
must never put a token, or any field of a line (a line with the fields swapped has its
token where the role should be), in an error message or a log line: an error names the
file and the line number only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from common.limits import ID_PATTERN

#: Shortest token accepted: ``secrets.token_urlsafe(32)`` makes 43 characters.
MIN_TOKEN_LENGTH = 16
#: What a token is made of: visible ASCII, which an HTTP header carries unchanged.
TOKEN_PATTERN = re.compile(r"[\x21-\x7e]+")

ADMIN = "admin"
CLIENT = "client"
#: A worker's role is this prefix and its worker id: ``worker:w1``.
WORKER_PREFIX = "worker:"


class TokenFileError(ValueError):
    """A tokens file that cannot be used, naming the file and the line, never a token."""


@dataclass(frozen=True)
class Caller:
    """Who a token says the caller is."""

    #: ``admin``, ``client`` or ``worker:ID``.
    role: str

    @property
    def worker_id(self) -> str | None:
        """The worker id of a worker's token; None for any other."""
        if self.role.startswith(WORKER_PREFIX):
            return self.role.removeprefix(WORKER_PREFIX)
        return None


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Tokens:
    """The roles of the known tokens, looked up by each token's digest."""

    def __init__(self, roles: dict[str, str]) -> None:
        """``roles``: the role of each token (checked by ``role_problem``)."""
        self._by_digest = {digest(token): Caller(role) for token, role in roles.items()}

    def __len__(self) -> int:
        return len(self._by_digest)

    def caller(self, token: str) -> Caller | None:
        """Who ``token`` belongs to, or None for a token not in the table."""
        return self._by_digest.get(digest(token))


def role_problem(role: str) -> str | None:
    """What is wrong with a role, without repeating it; None when it is a role."""
    if role in (ADMIN, CLIENT):
        return None
    if role.startswith(WORKER_PREFIX):
        if ID_PATTERN.fullmatch(role.removeprefix(WORKER_PREFIX)):
            return None
        return "the worker id of a worker:ID role must be 1 to 128 of A-Za-z0-9._:-"
    return f"the role must be {ADMIN}, {CLIENT} or {WORKER_PREFIX}ID"


def parse_tokens(text: str, source: str = "tokens file") -> Tokens:
    """The table of a tokens file's ``text``; ``TokenFileError`` naming ``source`` and the
    line for a line that is not ``TOKEN ROLE``, a short token, a role that is none, a
    token given twice, or a file with no token at all."""
    roles: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        problem = _line_problem(fields)
        if problem is None and fields[0] in roles:
            problem = f"the same token as line {first_line[fields[0]]}"
        if problem is not None:
            raise TokenFileError(f"{source}, line {number}: {problem}")
        roles[fields[0]] = fields[1]
        first_line[fields[0]] = number
    if not roles:
        raise TokenFileError(f"{source}: no tokens, so every request would be refused")
    return Tokens(roles)


def _line_problem(fields: list[str]) -> str | None:
    if len(fields) != 2:
        return f"expected TOKEN ROLE, found {len(fields)} fields"
    token, role = fields
    if not TOKEN_PATTERN.fullmatch(token):
        return "a token must be visible ASCII characters"
    if len(token) < MIN_TOKEN_LENGTH:
        return f"a token must be at least {MIN_TOKEN_LENGTH} characters long"
    return role_problem(role)


def read_tokens(path: str) -> Tokens:
    """The table of the tokens file at ``path``; ``TokenFileError`` when it cannot be read
    or is not a tokens file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise TokenFileError(f"tokens file {path}: cannot be read: {reason}") from None
    return parse_tokens(text, f"tokens file {path}")
