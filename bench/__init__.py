"""Benchmarks of revstore against stock Celery, measured side by side in one run.

Scripts, not tests: each ``python -m bench.<name>`` starts real ``celery
worker`` processes on the local PostgreSQL and Redis, prints its figures with
the stock baseline and ratio, and ``python -m bench.all`` runs every one and
rewrites ``docs/benchmarks.md``.
"""
