"""zmq-scheduler adapter: its own broker (`zmq-broker`, SQLite store) instead of redis-server.

- server: `zmq-broker --bind tcp://127.0.0.1:PORT --data DIR/scheduler.db --sync off|full`
  (`off` for the no-durability mode, `full` = fsync per commit for the durable one);
  bench.py restarts it on an empty data dir wherever it would FLUSHALL redis.
- worker process: `zmq-worker --concurrency 1 --handlers peers_zmqs` (1 slot, no prefetch,
  default thread pool: the handler runs in a thread of the worker process).
- client: `common.client.Client`, one call per task to submit and one to get its result.
  PEERS_ZMQS_MODE picks the submit call:
  - `pipeline` (label zmqs, the default): `Client.pipeline().submit`, which returns a handle
    at once and keeps submits in flight, sent in batches; client.py calls `flush()` (every
    acknowledgement in) inside the timed part of A and C.
  - `sync` (label zmqs-sync): `Client.submit`, which returns once the task is stored.
  The result is `Client.result`: the broker sends each outcome to the client that submitted
  the task once it is final, so the result of a finished task costs no round trip.
- args and results are bytes: ints as ASCII digits.

PEERS_ZMQS_BATCH=1 (label zmqs-batch) changes only workload A: `throughput_batch` submits with
`submit_many` in chunks of 1,000 and collects with `wait_many`, an API the peers' rows do not use.
"""
import os
import subprocess
import time

from worker import handler

PORT = int(os.environ.get("PEERS_ZMQS_PORT", "5590"))
ENDPOINT = f"tcp://127.0.0.1:{PORT}"
SYNC = {"nodurable": "off", "durable": "full"}
BATCH = os.environ.get("PEERS_ZMQS_BATCH", "") not in ("", "0")
MODE = os.environ.get("PEERS_ZMQS_MODE", "pipeline")
CHUNK = 1000
SERVER_PORT = PORT  # bench.py: refuse to start when taken


@handler("noop")
def noop(args: bytes) -> int:
    return int(args)  # the worker encodes an int result as JSON: b"123"


@handler("whoami")
def whoami(args: bytes) -> int:
    time.sleep(float(args))
    return os.getpid()


WORKER_DESC = ("k x `zmq-worker --concurrency 1` (one OS process each, 1 slot, thread pool; "
               "no prefetch); broker `zmq-broker --sync off` or `--sync full` (SQLite WAL); "
               + ("A via submit_many/wait_many in chunks of 1,000" if BATCH else
                  "submit via Client.pipeline()" if MODE == "pipeline" else
                  "submit via Client.submit (returns once stored)"))


def server_cmd(mode, datadir, bindir):
    """argv of the server bench.py starts instead of redis-server for this durability mode."""
    return [f"{bindir}/zmq-broker", "--bind", ENDPOINT, "--data",
            os.path.join(datadir, "scheduler.db"), "--sync", SYNC[mode]]


def server_ready():
    """True once the broker answers a health request."""
    from common.client import Client as ZClient
    from common.errors import Unavailable
    try:
        with ZClient(ENDPOINT, timeout=0.5) as c:
            c.health()
        return True
    except Unavailable:
        return False


def worker_cmds(k, bindir):
    return [[f"{bindir}/zmq-worker", "--broker", ENDPOINT, "--concurrency", "1",
             "--handlers", "peers_zmqs", "--log-level", "WARNING"] for _ in range(k)]


def versions():
    """zmq-scheduler's version and the commit of the checkout it is installed from."""
    import importlib.metadata as md

    import common
    root = os.path.dirname(os.path.dirname(os.path.abspath(common.__file__)))

    def git(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True,
                              text=True).stdout.strip()
    dirty = " (uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    return {"zmq-scheduler": f"{md.version('zmq-scheduler')} @ {git('rev-parse', 'HEAD')[:12]}"
                             + dirty}


class Client:
    def __init__(self):
        from common.client import Client as ZClient
        self.c = ZClient(ENDPOINT)  # default call timeout 5 s
        self.pipe = self.c.pipeline() if MODE == "pipeline" else None

    def submit(self, x):
        if self.pipe is not None:
            return self.pipe.submit("noop", str(x).encode())
        return self.c.submit("noop", str(x).encode())

    def flush(self):
        """Every submit so far acknowledged (raises the first refusal)."""
        if self.pipe is not None:
            self.pipe.flush()

    def submit_whoami(self, sleep_s):
        return self.c.submit("whoami", repr(sleep_s).encode())

    def result(self, task, timeout=60):
        return int(self.c.result(task, timeout))

    if BATCH:
        def throughput_batch(self, n):
            """Workload A with the batch calls; returns (perf_counter after the last submit,
            results in task order). client.py times it and checks the results."""
            ids = []
            for lo in range(0, n, CHUNK):
                ids += self.c.submit_many([{"handler": "noop", "args": str(i).encode()}
                                           for i in range(lo, min(n, lo + CHUNK))])
            t_enq = time.perf_counter()
            out = []
            for lo in range(0, n, CHUNK):
                chunk = ids[lo:lo + CHUNK]
                got = {t["id"]: t for t in self.c.wait_many(chunk, timeout=60)}
                for task_id in chunk:
                    t = got.get(task_id)
                    if t is None or t["status"] != "completed":
                        raise RuntimeError(f"task {task_id}: {t}")
                    out.append(int(t["result"]))
            return t_enq, out
