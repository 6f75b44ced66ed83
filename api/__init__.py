"""The REST API: an HTTP facade over the broker, served by gunicorn (``zmq-api``).

``api.app`` holds the routes, ``api.parse`` and ``api.render`` the JSON on the way in and
out, ``api.clients`` the pool of broker clients, ``api.serve`` and ``api.cli`` the
serving, ``api.jsonworker`` the gunicorn worker class (gevent, with read deadlines, whose
own error answers are JSON). Importing the package must never open a socket or read
settings.
"""
