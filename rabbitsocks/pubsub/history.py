"""History topics in the hub: each log's recent entries, its subscribers, and resumes.

Pure: no I/O. The hub keeps one ``HistoryStream`` per ``history`` entry of its broker's
configuration; the broker feeds it (``history_ready`` when the live flow of a log starts or
restarts, then each message as a ``Delivery`` with its offset, and ``position`` for entries
that are not messages, such as epoch markers).

Theory of operation
-------------------
A ``HistoryLog`` holds entries with offsets in ``(base, last]``: every message of the log
in that range, in order. For the memory broker it is the log itself (its retention is the
configuration's), for RabbitMQ a cache of the stream's tail (the stream has the rest).

A resume of topics ``T`` with positions ``o_T`` (same epoch) must send every message after
``o_T`` that matches ``T``, then the live flow, each once. It is *positioned* at a moment
when some offset ``x`` satisfies ``base <= x <= last`` and every message up to ``x`` that
it needs is in hand (from the log, or from a replay that read RabbitMQ up to ``x``): in that
synchronous step, the log's entries after ``x`` are taken and a ``Catcher`` replaces the
subscription in the stream's routing table, so the next live entry (``last + 1``) is
caught too. Nothing runs between the two, so nothing falls between them. When the join is
answered, the catcher's frames go out (after ``@join`` and ``@resume``) and the
subscription itself takes the catcher's place, again in one synchronous step.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from rabbitsocks.config import HistoryConfig
from rabbitsocks.messages import Delivery
from rabbitsocks.topics import TopicTrie, topic_matches

__all__ = [
    "AHEAD",
    "ALREADY_JOINED",
    "EPOCH_CHANGED",
    "LEFT_RETENTION",
    "NO_HISTORY",
    "TIMED_OUT",
    "Catcher",
    "HistoryLog",
    "HistoryStream",
    "Position",
    "Resume",
]

EPOCH_CHANGED = "epoch changed"
LEFT_RETENTION = "position left retention"
AHEAD = "position is ahead of the log"
NO_HISTORY = "topic has no history"
ALREADY_JOINED = "already joined"
TIMED_OUT = "replay timed out"


class Position(NamedTuple):
    """Where a message is in a log: its offset, in the log's epoch."""

    offset: int
    epoch: str


def _size(delivery: Delivery) -> int:
    return len(delivery.body) + len(delivery.routing_key)


class HistoryLog:
    """Entries with offsets in ``(base, last]``, in offset order, bounded by count, bytes
    (of bodies and routing keys) and age; the oldest go first."""

    def __init__(
        self,
        max_messages: int | None,
        max_bytes: int | None,
        max_age: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        #: Every message with an offset above ``base`` and at most ``last`` is here.
        self.base = -1
        self.last = -1
        self.bytes = 0
        # Parallel lists from index ``_start`` on (a list with a moving start: bisect needs
        # random access, which a deque does not give in O(1)).
        self._offsets: list[int] = []
        self._entries: list[Delivery] = []
        self._times: list[float] = []
        self._start = 0

    def __len__(self) -> int:
        return len(self._offsets) - self._start

    def reset(self, base: int) -> None:
        """Forget every entry: the next one follows ``base``."""
        self._offsets, self._entries, self._times = [], [], []
        self._start = 0
        self.bytes = 0
        self.base = self.last = base

    def append(self, delivery: Delivery) -> None:
        """Add the next message (its offset is above ``last``)."""
        self._offsets.append(delivery.offset)
        self._entries.append(delivery)
        self._times.append(self._clock())
        self.bytes += _size(delivery)
        self.last = delivery.offset
        self._trim()

    def prepend(self, entries: list[Delivery], base: int) -> None:
        """Older messages, read back from the broker: ``entries`` (in offset order, none
        above ``base`` of the log) are every message after ``base`` (the argument) up to
        the log's ``base``. As many as the bounds allow are kept, the newest first."""
        if base >= self.base:
            return
        entries = [e for e in entries if base < e.offset <= self.base]
        now = self._times[self._start] if len(self) else self._clock()
        self._offsets = [e.offset for e in entries] + self._offsets[self._start :]
        self._entries = entries + self._entries[self._start :]
        self._times = [now] * len(entries) + self._times[self._start :]
        self._start = 0
        self.bytes += sum(_size(e) for e in entries)
        self.base = base
        self._trim()

    def advance(self, offset: int) -> None:
        """An entry that is not a message (a marker) at ``offset``."""
        if offset > self.last:
            if len(self) == 0 and self.base == self.last:
                self.base = offset  # nothing held: keep "(base, last]" tight
            self.last = offset

    def after(self, offset: int) -> list[Delivery]:
        """The messages after ``offset`` (which must be at least ``base``), oldest first."""
        self._expire()
        start = bisect.bisect_right(self._offsets, offset, self._start)
        return self._entries[start:]

    def covers(self, offset: int) -> bool:
        """Whether every message after ``offset`` up to ``last`` is here."""
        self._expire()
        return self.base <= offset

    def _trim(self) -> None:
        max_messages, max_bytes = self.max_messages, self.max_bytes
        while len(self) and (
            (max_messages is not None and len(self) > max_messages)
            or (max_bytes is not None and self.bytes > max_bytes)
        ):
            self._drop_oldest()
        self._expire()

    def _expire(self) -> None:
        if self.max_age is None or not len(self):
            return
        horizon = self._clock() - self.max_age
        while len(self) and self._times[self._start] < horizon:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        i = self._start
        self.base = self._offsets[i]
        self.bytes -= _size(self._entries[i])
        self._entries[i] = None  # type: ignore[call-overload]  # freed now, compacted later
        self._start = i + 1
        if self._start > 1024 and self._start * 2 > len(self._offsets):
            del self._offsets[: self._start], self._entries[: self._start]
            del self._times[: self._start]
            self._start = 0


class Catcher:
    """Stands in a stream's routing table for a subscription whose resume is positioned
    but not answered yet: what the live flow brings joins the resume's entries."""

    __slots__ = ("resume",)

    def __init__(self, resume: Resume) -> None:
        self.resume = resume

    def catch(self, delivery: Delivery) -> None:
        resume = self.resume
        if resume.over_limit is None:
            resume.keep(delivery)


class Resume:
    """One connection resuming topics of one stream: what it asked for, and where it is.

    ``positions`` maps each topic to the offset of the last message the client received.
    Once ``positioned``, ``entries`` holds every message after the positions that the
    topics match, up to the moment the catcher took over.
    """

    def __init__(self, stream: HistoryStream, positions: Mapping[str, int]) -> None:
        self.stream = stream
        self.positions = dict(positions)
        self.entries: list[Delivery] = []
        self.bytes = 0
        #: Topic -> why it is not recovered (every topic is, until said otherwise).
        self.failed: dict[str, str] = {}
        self.catcher: Catcher | None = None
        #: Set by ``position``: the offset the replay had reached (``None`` until then).
        self.positioned_at: int | None = None
        #: Called once positioned (a replay waiting for it).
        self.on_positioned: Callable[[], None] | None = None
        #: The offset up to which a replay has read RabbitMQ (messages and markers).
        self.read_up_to: int | None = None
        self.over_limit: str | None = None

    def wants(self, delivery: Delivery) -> bool:
        """Whether one of the topics matches ``delivery`` after that topic's position."""
        offset, key = delivery.offset, delivery.routing_key
        for topic, after in self.positions.items():
            if offset > after and topic not in self.failed and topic_matches(topic, key):
                return True
        return False

    def keep(self, delivery: Delivery) -> bool:
        """Add a replayed message if wanted; ``False`` once past the replay's bounds."""
        if not self.wants(delivery):
            return True
        self.entries.append(delivery)
        self.bytes += len(delivery.body)
        config = self.stream.config
        if len(self.entries) > config.replay_limit:
            self.over_limit = f"replay limit exceeded (max {config.replay_limit} messages)"
        elif self.bytes > config.replay_bytes:
            self.over_limit = f"replay limit exceeded (max {config.replay_bytes} bytes)"
        return self.over_limit is None

    def fail(self, topics: Iterable[str], reason: str) -> None:
        for topic in topics:
            self.failed.setdefault(topic, reason)

    @property
    def recovering(self) -> list[str]:
        """The topics not failed (yet)."""
        return [t for t in self.positions if t not in self.failed]

    @property
    def start(self) -> int:
        """The oldest position still to recover from."""
        return min(self.positions[t] for t in self.recovering)

    @property
    def furthest(self) -> int:
        """The newest position still to recover from."""
        return max(self.positions[t] for t in self.recovering)

    def result(self) -> list[Delivery]:
        """Every message to send, in offset order, once the outcome is known."""
        if self.over_limit is not None:
            self.fail(self.positions, self.over_limit)
            return []
        return [e for e in self.entries if self.wants(e)]


class HistoryStream:
    """One history log as the hub sees it: its epoch, its recent entries, its subscribers
    (a ``TopicTrie`` of subscriptions by joined topic) and its resumes waiting for the live
    flow."""

    def __init__(self, index: int, config: HistoryConfig, *, authoritative: bool) -> None:
        self.index = index
        self.config = config
        self.pattern = config.topics
        #: The log *is* the history (memory broker), or a cache of RabbitMQ's.
        self.authoritative = authoritative
        if authoritative:
            self.log = HistoryLog(config.max_messages, config.max_bytes, config.max_age)
        else:
            self.log = HistoryLog(config.cache_messages, config.cache_bytes, config.max_age)
        #: ``None`` until the broker said where the live flow starts.
        self.epoch: str | None = None
        self.routes: TopicTrie[object] = TopicTrie()
        #: Resumes waiting for the live flow: to reach an offset, or to meet their replay.
        self.waiting: list[Resume] = []
        #: Every resume not released yet, positioned or not.
        self.active: set[Resume] = set()
        #: When the live flow last brought something (monotonic seconds), for ``#gap``.
        self.last_seen = time.monotonic()
        self._changed: asyncio.Future[None] | None = None

    @property
    def ready(self) -> bool:
        return self.epoch is not None

    def restart(self, epoch: str, after: int) -> float | None:
        """The live flow (re)starts after offset ``after`` in ``epoch``. When that breaks
        continuity with what was delivered before, returns since when (monotonic seconds)
        its subscribers may have missed messages."""
        continuous = self.epoch == epoch and self.log.last == after
        was_ready = self.ready
        since = self.last_seen
        if not continuous:
            reason = LEFT_RETENTION if self.epoch == epoch else EPOCH_CHANGED
            self.log.reset(after)
            for resume in self.active:  # a hole in what they have gathered
                resume.fail(resume.positions, reason)
        self.epoch = epoch
        self.last_seen = time.monotonic()
        self._wake()
        return since if was_ready and not continuous else None

    def append(self, delivery: Delivery) -> None:
        self.log.append(delivery)
        self.last_seen = time.monotonic()
        if self.waiting or self._changed is not None:
            self._wake()

    def advance(self, offset: int) -> None:
        self.log.advance(offset)
        if self.waiting or self._changed is not None:
            self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)
        for resume in list(self.waiting):
            self.try_position(resume)

    def try_position(self, resume: Resume) -> bool:
        """Position ``resume`` now if it can be (see the module's docstring)."""
        if resume.positioned_at is not None:
            return True
        if not resume.recovering:
            return False
        log = self.log
        if resume.furthest > log.last:
            return False  # a position this process has not reached yet
        reached = resume.read_up_to
        if reached is None:  # served from the log alone
            if not log.covers(resume.start):
                return False
            reached = resume.start
        elif not (log.covers(reached) and reached <= log.last):
            return False
        for delivery in log.after(reached):
            if not resume.keep(delivery):
                break
        resume.positioned_at = reached
        if resume.over_limit is None:
            catcher = resume.catcher = Catcher(resume)
            for topic in resume.recovering:
                self.routes.add(topic, catcher)
        if resume in self.waiting:
            self.waiting.remove(resume)
        if resume.on_positioned is not None:
            resume.on_positioned()
        return True

    def release(self, resume: Resume) -> None:
        """Forget ``resume``: out of the waiting list, its catcher out of the routing table."""
        if resume in self.waiting:
            self.waiting.remove(resume)
        self.active.discard(resume)
        catcher, resume.catcher = resume.catcher, None
        if catcher is not None:
            for topic in resume.positions:
                self.routes.discard(topic, catcher)

    def changed(self) -> asyncio.Future[None]:
        """Resolved at the next change of the live flow (an entry, a restart)."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed
