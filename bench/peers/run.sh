#!/usr/bin/env bash
# usage: peers/run.sh SYSTEM [extra bench.py args, e.g. --reps 1 --n 2000]
#   main:        celery | rq | dramatiq | huey | dramatiq-t8   (both durability modes, N=10000, 3 runs)
#                zmqs | zmqs-sync | zmqs-batch  (zmq-scheduler: own broker instead of redis;
#                -sync: Client.submit, durable each call; -batch: A batched)
#   sensitivity: celery-prefork | rq-fork | dramatiq-defaults | dramatiq-untuned
#                (no-durability mode only)
#   report:      rebuild results.md from results/*.json
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PEERS_VENV:-/tmp/peers-venv}/bin/python
[ -x "$PY" ] || { echo "no venv at $PY: run $HERE/setup.sh first" >&2; exit 1; }
B=("$PY" "$HERE/bench.py")
sys=${1:-}; shift || true
case "$sys" in
  celery)            PEERS_CELERY_POOL=solo "${B[@]}" celery "$@" ;;
  rq)                PEERS_RQ_WORKER_CLASS=rq.worker.SimpleWorker "${B[@]}" rq "$@" ;;
  dramatiq)          PEERS_DRAMATIQ_THREADS=1 PEERS_DRAMATIQ_WORKER_TIMEOUT=2 "${B[@]}" dramatiq "$@" ;;
  huey)              "${B[@]}" huey "$@" ;;
  zmqs)              "${B[@]}" zmqs "$@" ;;
  zmqs-batch)        PEERS_ZMQS_BATCH=1 "${B[@]}" zmqs --label zmqs-batch "$@" ;;
  zmqs-sync)         PEERS_ZMQS_MODE=sync "${B[@]}" zmqs --label zmqs-sync "$@" ;;
  celery-prefork)    PEERS_CELERY_POOL=prefork "${B[@]}" celery --label celery-prefork --modes nodurable "$@" ;;
  rq-fork)           PEERS_RQ_WORKER_CLASS=rq.Worker "${B[@]}" rq --label rq-fork --modes nodurable --n 1000 --lat-n 300 "$@" ;;
  dramatiq-t8)       PEERS_DRAMATIQ_THREADS=8 PEERS_DRAMATIQ_WORKER_TIMEOUT=2 "${B[@]}" dramatiq --label dramatiq-t8 "$@" ;;
  dramatiq-defaults) PEERS_DRAMATIQ_THREADS=8 PEERS_DRAMATIQ_WORKER_TIMEOUT=1000 "${B[@]}" dramatiq --label dramatiq-defaults --modes nodurable "$@" ;;
  dramatiq-untuned)  PEERS_DRAMATIQ_THREADS=1 PEERS_DRAMATIQ_WORKER_TIMEOUT=1000 "${B[@]}" dramatiq --label dramatiq-untuned --modes nodurable --n 3000 "$@" ;;
  report)            ;;
  *) sed -n '2,7p' "$0" >&2; exit 2 ;;
esac
"$PY" "$HERE/report.py"
