#!/usr/bin/env bash
# One-time setup: Debian's redis-server + a dedicated virtualenv with the pinned peers.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${PEERS_VENV:-/tmp/peers-venv}
if ! command -v redis-server >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# celery, redis, rq, dramatiq[redis], huey and their dependencies, as measured.
# (packaging is listed because kombu's redis transport imports it.)
"$VENV/bin/pip" install -q -r "$HERE/requirements.lock"
"$VENV/bin/pip" check
# zmq-scheduler itself, from this checkout (zmq-broker and zmq-worker land in the venv).
"$VENV/bin/pip" install -q -e "$HERE/../.."
redis-server --version
