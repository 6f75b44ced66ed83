"""The command-line client: ``zmq-scheduler submit``, ``tasks``, ``task``, ``cancel``,
``retry``, ``purge``, ``workers``, ``drain``, ``stats``.

``add_commands`` gives ``zmq-scheduler``'s parser a subcommand for each command of the
table (``common.cli.commands``), each with the client's settings (``--broker`` or
``--api`` and ``--token``, the CURVE keys, ``--request-timeout``: ``common.settings``) and
``--json``; ``run`` runs the one parsed. Exit status: 0 done; 1 a task that failed or was
cancelled, an unknown id, a conflict, a scheduler that does not answer; 2 bad input,
found here or refused by the scheduler, with a message that names it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from common import settings as config
from common.cli.backends import open_backend
from common.cli.commands import COMMANDS, UsageError
from common.cli.output import as_json
from common.errors import InvalidInput, SchedulerError, TooLarge

__all__ = ["COMMANDS", "add_commands", "run"]


def add_commands(sub: Any) -> None:
    """A subparser of ``sub`` (``add_subparsers``'s) for every command."""
    for name, cmd in COMMANDS.items():
        parser: argparse.ArgumentParser = sub.add_parser(
            name,
            help=cmd.help,
            description=f"{cmd.description} It reaches the broker (--broker) or, given --api, "
            "the REST API; every setting can be given in the environment instead "
            "(ZMQS_<NAME>), a flag wins.",
        )
        for flags, options in cmd.arguments:
            parser.add_argument(*flags, **options)
        parser.add_argument("--json", action="store_true", help="print JSON, for scripts")
        config.add_command(parser, config.CLIENT)
        parser.set_defaults(command_parser=parser)


def run(args: argparse.Namespace) -> int:
    """Run the command ``args`` names; its exit status."""
    parser: argparse.ArgumentParser = args.command_parser
    settings = config.from_args(parser, args, config.CLIENT)
    try:
        backend = open_backend(settings)
    except (OSError, ValueError) as exc:
        parser.error(f"the CURVE keys cannot be used: {exc}")
    try:
        shown = COMMANDS[args.command].run(backend, args)
    except UsageError as exc:
        parser.error(str(exc))
    except (InvalidInput, TooLarge) as exc:
        print(f"{parser.prog}: error: {exc.description}", file=sys.stderr)
        return 2
    except SchedulerError as exc:
        print(f"{parser.prog}: {exc.title.lower()}: {exc.description}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        backend.close()
    if args.json:
        print(as_json(shown.data))
    elif shown.text:
        print(shown.text)
    if shown.error:
        print(shown.error, file=sys.stderr)
    return shown.status
