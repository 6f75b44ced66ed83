"""``zmq-api``: serve the REST API with gunicorn, configured by flags and environment.

Runs gunicorn in-process with the same options as ``deploy/gunicorn.conf.py``
(``api.serve``). The app is built in each worker after the fork, from the settings
given here, so flags reach the workers; the tokens file is read here, once, so a bad one
stops the command before gunicorn starts. This module must never build the app or open a
broker connection in the master process: ZeroMQ sockets do not survive a fork.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gunicorn.app.base import BaseApplication

from api.app import create_app
from api.serve import gunicorn_options
from common import logs
from common import settings as config
from common.curve import ClientKeys
from common.settings import Settings
from common.tokens import TokenFileError, Tokens, read_tokens


class APIServer(BaseApplication):  # type: ignore[misc]
    """Gunicorn with its options and app taken from ``Settings`` instead of its own argv."""

    def __init__(self, settings: Settings, tokens: Tokens | None = None) -> None:
        # Set first: BaseApplication.__init__ calls load_config, which needs them.
        self.settings = settings
        self.tokens = tokens
        self.options = gunicorn_options(settings)
        super().__init__()

    def load_config(self) -> None:
        for name, value in self.options.items():
            # An older gunicorn lacks some options; a config file would ignore them too.
            if name in self.cfg.settings:
                self.cfg.set(name, value)

    def load(self) -> Any:
        # Called in each worker after the fork: the app's clients are made there.
        return create_app(settings=self.settings, tokens=self.tokens)


def main(argv: Sequence[str] | None = None) -> int:
    parser, settings = config.command_line(
        "zmq-api",
        "Serve the REST API under gunicorn: each request becomes one broker request.",
        config.API,
        argv,
    )
    try:
        tokens = read_tokens(settings.api_tokens) if settings.api_tokens else None
    except TokenFileError as exc:
        parser.error(str(exc))
    try:
        server = APIServer(settings, tokens)
        # Read here as well as in each process after the fork: a bad key stops the command.
        ClientKeys.load(settings.curve_server_key, settings.curve_secret)
    except (ValueError, OSError) as exc:  # a bad listen address, count, log level or key
        parser.error(str(exc))
    logs.configure(
        settings.log_level,
        "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s",
        settings.log_format,
    )
    server.run()  # returns only through SystemExit, with gunicorn's exit status
    return 0
