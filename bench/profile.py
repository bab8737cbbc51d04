"""Where the server's time goes: a summary of a ``py-spy record --format raw`` file.

Each line of the raw (collapsed) format is a stack, outermost frame first, frames separated
by ``;``, then a space and the number of samples. A frame reads ``function (file:line)``.
Self time is the innermost frame's; inclusive time counts a function once per stack it is
on. Samples are also grouped by the package of their innermost frame (aiormq, aiohttp,
socketio, engineio, asyncio, rabbitsocks, ...), which is the question "what dominates".
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

__all__ = ["summarize_raw"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


def _package(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/rabbitsocks/" in path or path.startswith("rabbitsocks/"):
        return "rabbitsocks"
    if "/callbacks/" in path:
        return "callbacks"
    if "/lib/python3" in path:
        return path.rsplit("/lib/python3", 1)[1].split("/", 2)[1].removesuffix(".py")
    return path or "?"


def _short(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame)
    if not m:
        return frame, "?"
    path = m["file"]
    where = path.split("site-packages/", 1)[-1]
    if "/main/" in where:
        where = where.split("/main/", 1)[1]
    elif "/lib/python3" in where:
        where = where.rsplit("/lib/python3", 1)[1].split("/", 2)[-1]
    return f"{m['func']} ({where})", _package(path)


def summarize_raw(text: str, top: int = 15) -> dict[str, Any]:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f[0].startswith("thread ")]
        if not frames:
            continue
        name, package = frames[-1]
        self_time[name] += count
        packages[package] += count
        for seen in {f[0] for f in frames}:
            inclusive[seen] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, v / total) for k, v in counter.most_common(top)] if total else []

    return {
        "samples": total,
        "self": share(self_time),
        "inclusive": share(inclusive),
        "packages": share(packages),
    }
