"""What ``/proc`` says about a process: CPU seconds and resident memory (Linux only)."""

from __future__ import annotations

import os

__all__ = ["cpu_seconds", "cpu_split", "descendants", "exists", "rss_bytes"]

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system (kernel) CPU seconds of ``pid``, threads included, children not."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # Fields after "(comm)": state is field 3, utime 14 and stime 15 (proc(5)).
    rest = stat[stat.rindex(b")") + 2 :].split()
    return int(rest[11]) / _TICKS, int(rest[12]) / _TICKS


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of ``pid``."""
    user, system = cpu_split(pid)
    return user + system


def rss_bytes(pid: int) -> int:
    """Resident set size (``VmRSS``) of ``pid``."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}/stat")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from ``/proc/stat``."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return (total - idle) / _TICKS


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a supervisor's workers, say)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def tree_cpu_split(pid: int) -> tuple[float, float]:
    """``cpu_split`` summed over ``pid`` and its descendants."""
    user = system = 0.0
    for member in descendants(pid):
        try:
            u, s = cpu_split(member)
        except OSError:
            continue
        user, system = user + u, system + s
    return user, system


def tree_rss_bytes(pid: int) -> int:
    """RSS summed over ``pid`` and its descendants (pages they share count twice)."""
    total = 0
    for member in descendants(pid):
        try:
            total += rss_bytes(member)
        except OSError:
            continue
    return total
