"""Gunicorn config for the REST API: ``gunicorn -c deploy/gunicorn.conf.py 'api.app:create_app()'``.

Settings come from the environment (``ZMQS_LISTEN``, ``ZMQS_PROCESSES``, ``ZMQS_CONNECTIONS``,
``ZMQS_LOG_LEVEL``...; see ``common.settings``), the same ones ``create_app()`` reads in
each worker. The options themselves are built by ``api.serve.gunicorn_options``, which
``zmq-api`` uses too: this file must never set options of its own, or the two would drift.
"""

from api.serve import gunicorn_options
from common.settings import load

# Gunicorn reads its settings from this module's global names (bind, workers...).
globals().update(gunicorn_options(load()))
