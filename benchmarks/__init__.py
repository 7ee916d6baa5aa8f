"""Benchmarks of the pipeline against the reference notebook.

Run them all with ``python -m benchmarks`` from the repository root.
"""
