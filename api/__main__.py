"""``python -m api``: the same as the ``zmq-api`` command. Must never do more than call it."""

from api.cli import main

raise SystemExit(main())
