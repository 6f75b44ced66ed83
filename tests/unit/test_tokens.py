"""The tokens file: one ``TOKEN ROLE`` a line, every mistake named by its line, never its token."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.tokens import MIN_TOKEN_LENGTH, TokenFileError, parse_tokens, read_tokens

ADMIN_TOKEN = "a" * 43
CLIENT_TOKEN = "c-_" * 10
WORKER_TOKEN = "w" * MIN_TOKEN_LENGTH


def test_roles_are_looked_up_by_token_and_comments_and_blank_lines_are_skipped() -> None:
    text = (
        "# API tokens\n"
        "\n"
        f"{ADMIN_TOKEN} admin\n"
        f"   {CLIENT_TOKEN}\tclient   \n"
        "   # an indented comment\n"
        f"{WORKER_TOKEN} worker:gpu-host.1:a\n"
    )

    tokens = parse_tokens(text)

    assert len(tokens) == 3
    admin, client, worker = (tokens.caller(t) for t in (ADMIN_TOKEN, CLIENT_TOKEN, WORKER_TOKEN))
    assert admin is not None and admin.role == "admin" and admin.worker_id is None
    assert client is not None and client.role == "client" and client.worker_id is None
    assert worker is not None and worker.worker_id == "gpu-host.1:a"
    assert tokens.caller("b" * 43) is None
    assert tokens.caller(ADMIN_TOKEN[:-1]) is None
    assert tokens.caller("") is None


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (f"{ADMIN_TOKEN}", "expected TOKEN ROLE, found 1 fields"),
        (f"{ADMIN_TOKEN} admin extra", "expected TOKEN ROLE, found 3 fields"),
        # The fields swapped: the token is where the role should be, and is not repeated.
        (f"admin {ADMIN_TOKEN}", "at least 16 characters"),
        (f"{ADMIN_TOKEN} root", "the role must be admin, client or worker:ID"),
        (f"{ADMIN_TOKEN} {ADMIN_TOKEN}", "the role must be admin, client or worker:ID"),
        (f"{ADMIN_TOKEN} worker:", "the worker id of a worker:ID role must be"),
        (f"{ADMIN_TOKEN} worker:a/b", "the worker id of a worker:ID role must be"),
        (f"{ADMIN_TOKEN} worker:{'x' * 129}", "the worker id of a worker:ID role must be"),
        (f"{'s' * (MIN_TOKEN_LENGTH - 1)} admin", "at least 16 characters"),
        (f"{'é' * 20} admin", "visible ASCII"),
        (f"{ADMIN_TOKEN} client", "the same token as line 1"),
    ],
)
def test_a_bad_line_is_named_by_number_and_its_fields_are_not_repeated(
    line: str, problem: str
) -> None:
    text = f"{ADMIN_TOKEN} admin\n\n# comment\n{line}\n{CLIENT_TOKEN} client\n"

    with pytest.raises(TokenFileError) as raised:
        parse_tokens(text, "tokens file x")

    message = str(raised.value)
    assert message.startswith("tokens file x, line 4: "), message
    assert problem in message
    for secret in {*line.split(), ADMIN_TOKEN, CLIENT_TOKEN} - {"admin", "client", "worker:"}:
        assert secret not in message


def test_a_file_without_tokens_is_refused() -> None:
    with pytest.raises(TokenFileError, match="no tokens"):
        parse_tokens("# nothing yet\n\n")


def test_read_tokens_names_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    good = tmp_path / "tokens"
    good.write_text(f"{ADMIN_TOKEN} admin\n")
    assert read_tokens(str(good)).caller(ADMIN_TOKEN) is not None

    with pytest.raises(TokenFileError, match="missing: cannot be read"):
        read_tokens(str(tmp_path / "missing"))
    (tmp_path / "latin").write_bytes(b"\xe9" * 20 + b" admin\n")
    with pytest.raises(TokenFileError, match="not UTF-8"):
        read_tokens(str(tmp_path / "latin"))
