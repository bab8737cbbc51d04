"""Latency histograms as the load generator sends them, merged and read as percentiles.

The layout (``bench/loadgen.mjs``): microsecond values below 128 have a bucket of
their own; above, each power of two is cut in 64 buckets, so a percentile is within about
1.6% of the true value. A bucket is reported by its midpoint.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Histogram"]

_SUB = 64


def bucket_value(index: int) -> float:
    """The midpoint, in microseconds, of bucket ``index``."""
    if index < 128:
        return float(index)
    exponent = 7 + (index - 128) // _SUB
    sub = (index - 128) % _SUB
    width = 1 << (exponent - 6)
    return (_SUB + sub) * width + width / 2


class Histogram:
    def __init__(self) -> None:
        self.counts: dict[int, float] = {}
        self.max_us = 0.0

    def add_sparse(self, pairs: Iterable[list[float]], max_us: float) -> None:
        for index, count in pairs:
            i = int(index)
            self.counts[i] = self.counts.get(i, 0) + count
        self.max_us = max(self.max_us, max_us)

    @property
    def total(self) -> float:
        return sum(self.counts.values())

    def percentile(self, p: float) -> float | None:
        """The ``p``-th percentile (0 to 100) in microseconds, or None when empty."""
        total = self.total
        if total == 0:
            return None
        rank = total * p / 100.0
        seen = 0.0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(bucket_value(index), self.max_us)
        return self.max_us
