"""The fan-out benchmark of issue 6: a program that prints figures, not a test.

See ``bench/README.md``. Entry point: ``python -m bench`` (or ``bench/run``).
"""
