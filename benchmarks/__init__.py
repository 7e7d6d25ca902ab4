"""Benchmarks: each module is a script that prints its figures and their ratios (``make bench``).

None of them is a timed test: they measure, side by side in one run, and print. Run one with
``.venv/bin/python -m benchmarks.<name>`` from the repository root, or all with ``make bench``.
"""
