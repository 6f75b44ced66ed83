"""Benchmarks: ``make bench`` runs them all; each prints JSON lines and a summary table."""
