"""``python -m worker``: the same as the ``zmq-worker`` command."""

import sys

from worker.cli import main

# The guard matters: the process pool's "spawn" children import the parent's main module.
if __name__ == "__main__":
    sys.exit(main())
