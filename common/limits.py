"""Every bound on what a peer may ask, in one table that the API, the client and the broker read.

A value outside these is refused where it enters (an HTTP request, a call of the client
library, a frame at the broker or the worker) as ``InvalidInput`` naming the field, so a
value one layer accepts can never break another. Bounds are generous: they keep numbers
within what every layer can represent (a 64-bit integer, a timestamp, a msgpack value)
and sizes within what one message should carry.
"""

from __future__ import annotations

import re

#: Most tasks in one submit: a ``submit`` request, ``POST /tasks/batch``.
MAX_BATCH = 10_000
#: Most task ids in one ``wait_many``.
MAX_WAIT_IDS = MAX_BATCH
#: Longest a client may ask the broker to hold an answer (``wait``, ``wait_many``, a submit
#: with ``wait``), in seconds.
MAX_WAIT = 300.0
#: Longest an HTTP request may be held (``?wait=`` on the REST API, an HTTP worker's
#: long-poll), in seconds: each held request holds one of the API's connections.
MAX_HTTP_WAIT = 30.0
#: Largest page of a task listing, and the page given when none is asked for.
MAX_PAGE = 1000
DEFAULT_PAGE = 100

#: Highest ``--max-payload``: SQLite stores a value of at most 1,000,000,000 bytes, and a
#: task's args and result travel together in one reply.
MAX_PAYLOAD = 256 * 1024 * 1024
#: Most finished tasks one ``purge`` request deletes, and how many when it does not say:
#: each request is one transaction of the store, so the broker's loop is held that long.
MAX_PURGE = 10_000
DEFAULT_PURGE = 1000
#: Latest time a ``purge`` may name as ``before``, in seconds since the epoch (year 9999).
MAX_TIME = 253_402_300_799.0

#: Largest page of a task listing in bytes (about: the records' sizes as ``Task.size``
#: counts them); a page holds at least one task however large.
MAX_PAGE_BYTES = 4 * 1024 * 1024

#: Ids a client or a worker chooses (worker ids) and ids the broker makes (task ids) are
#: 1 to ``MAX_ID_LENGTH`` of these characters: safe in a URL path, a log line and a file name.
ID_CHARACTERS = "A-Za-z0-9._:-"
MAX_ID_LENGTH = 128
ID_PATTERN = re.compile(f"[{ID_CHARACTERS}]{{1,{MAX_ID_LENGTH}}}")
#: Longest task name, handler name, capability tag or idempotency key, in characters.
MAX_NAME_LENGTH = 256
#: Longest error text of an outcome, in characters (a worker cuts longer ones).
MAX_ERROR_LENGTH = 16_384
#: Longest traceback of a failed run, in characters (a worker keeps the end of a longer one:
#: the innermost frames, where it failed).
MAX_TRACEBACK_LENGTH = 32_768
#: Longest host name a worker reports, in characters.
MAX_HOST_LENGTH = 256

#: Most dependencies of one task.
MAX_DEPENDENCIES = 10_000
#: Most dependents a task's record lists (``get``), the first ones submitted: a task may
#: have millions, and a record stays small (it says whether there are more).
DEPENDENTS_SHOWN = 100
#: Most tags a task may require.
MAX_REQUIRES = 256
#: Most capabilities (handlers and tags) one worker may declare.
MAX_CAPABILITIES = 10_000
#: Largest priority magnitude: a signed 64-bit integer, with room for arithmetic.
MAX_PRIORITY = 2**62
#: Most retries one task may ask for.
MAX_RETRIES = 1000
#: Longest task timeout, in seconds (about 115 days): any deadline it makes is a valid time.
MAX_TIMEOUT = 1e7
#: Largest amount of a resource (cpu, memory MB, disk MB) a task or a worker may name.
MAX_RESOURCE = 1e12
#: Most task slots of one worker.
MAX_SLOTS = 100_000
#: Largest attempt number of a run (a task runs at most about ``MAX_RETRIES`` plus a few
#: lost runs; this only keeps the number a sane integer).
MAX_ATTEMPT = 2**31 - 1
#: Largest process id a worker reports.
MAX_PID = 2**31 - 1
#: Longest session token a READY may carry, in bytes.
MAX_SESSION = 64
#: Largest list cursor: the broker's sequence numbers are signed 64-bit integers.
MAX_CURSOR = 2**63 - 1
#: Largest request number of a client.
MAX_REQUEST_NUMBER = 2**63 - 1
