"""Benchmarks of the delivery workers, each with its baseline beside it in the same run.

``python -m bench`` runs every section; ``--only e2e,producer`` picks some; ``--quick`` is
a smoke run for CI. See docs/performance.md for what each section measures.
"""
