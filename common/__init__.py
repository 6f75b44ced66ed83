"""Shared pieces: wire protocol, settings, models, errors and the client library."""
