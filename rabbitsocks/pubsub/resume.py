"""The hub's history logs: which topics they serve, their live flows, and resumes.

``Histories`` is the hub's part for a broker with history patterns (``Broker.history``):
it is the ``HistorySink`` the broker reports to, routes the logs' messages to the
subscriptions that joined topics they serve, and runs resumes (``JoinPlan`` per join
command). ``pubsub/history.py`` has the data structures and the seam; this module waits
and reads RabbitMQ when the in-process log is not enough. See docs/architecture.md,
"History and resume".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from rabbitsocks.brokers.base import BrokerHistory
from rabbitsocks.errors import BrokerError
from rabbitsocks.frames import SharedFrame
from rabbitsocks.messages import Delivery, Encoder
from rabbitsocks.pubsub.history import (
    AHEAD,
    ALREADY_JOINED,
    EPOCH_CHANGED,
    LEFT_RETENTION,
    TIMED_OUT,
    Catcher,
    HistoryStream,
    Position,
    Resume,
)
from rabbitsocks.pubsub.subscription import JoinResult, Subscription
from rabbitsocks.topics import pattern_covers, patterns_overlap

__all__ = ["Histories", "JoinPlan", "notify_gap", "wall_ms"]

logger = logging.getLogger("rabbitsocks.hub")

FanOut = Callable[[Delivery, Iterable[Subscription]], None]
Encode = Callable[[Delivery, Encoder], SharedFrame | None]


def wall_ms(monotonic: float) -> int:
    """A ``time.monotonic()`` moment as milliseconds since the Unix epoch."""
    return int((time.time() - (time.monotonic() - monotonic)) * 1000)


def notify_gap(sub: Subscription, topics: list[str], start_ms: int, end_ms: int) -> None:
    if sub.on_gap is None:
        return
    try:
        sub.on_gap(topics, start_ms, end_ms)
    except Exception:  # one broken connection must not keep the others from knowing
        logger.exception("telling a connection about a gap failed")


class Histories:
    """The history logs of one hub's broker, as ``HistoryStream`` objects."""

    def __init__(
        self,
        source: BrokerHistory,
        fan_out: FanOut,
        encode: Encode,
        broker_name: str,
        max_replays: int = 16,
    ) -> None:
        self.source = source
        self.streams = [
            HistoryStream(i, config, authoritative=source.authoritative)
            for i, config in enumerate(source.configs)
        ]
        self._fan_out = fan_out
        self._encode = encode
        self._broker_name = broker_name
        #: The history topics each subscription joined, and the log serving each.
        self._serving: dict[Subscription, dict[str, HistoryStream]] = {}
        #: Subscriptions with a topic on the queue that overlaps one of their history
        #: topics: a message both match reaches them twice, and the queue's copy is skipped.
        self._dual: set[Subscription] = set()
        self._replays = asyncio.Semaphore(max_replays)
        #: Taken by a join with positions from its last await until its answer is written.
        self.turn = asyncio.Lock()
        #: Reading a log back from the broker into memory: one at a time per log.
        self._backfills: dict[HistoryStream, asyncio.Task[None]] = {}
        #: Counters for /metrics: resumes answered, replayed messages, RabbitMQ replays.
        self.recovered = 0
        self.unrecovered = 0
        self.replayed = 0
        #: Reads of the broker: one resume's own, and a log's filling back.
        self.broker_replays = 0
        self.backfills = 0
        #: Reads of the broker under way (at most ``max_replays``).
        self.reads_running = 0
        source.attach(self)

    # --- what the broker reports (HistorySink) ------------------------------------------

    def history_ready(self, stream: int, epoch: str, after: int) -> None:
        log = self.streams[stream]
        since = log.restart(epoch, after)
        if not log.authoritative and len(log.log) == 0 and after >= 0:
            # A new log in memory (this process started, or the stream started over): fill
            # it with the stream's recent past, so that clients coming from elsewhere resume
            # from memory rather than one replay each.
            start = max(0, after - log.config.cache_messages + 1)
            self._backfill_soon(log, start)
        if since is None:
            logger.debug("history %r: live after %d in epoch %s", log.pattern, after, epoch)
            return
        logger.warning(
            "history %r of broker %r restarts after offset %d in epoch %s:"
            " its subscribers are told they may have missed messages",
            log.pattern,
            self._broker_name,
            after,
            epoch,
        )
        start_ms, end_ms = wall_ms(since), wall_ms(time.monotonic())
        for sub, serving in list(self._serving.items()):
            topics = sorted(t for t, s in serving.items() if s is log)
            if topics:
                notify_gap(sub, topics, start_ms, end_ms)

    def history_position(self, stream: int, offset: int) -> None:
        self.streams[stream].advance(offset)

    def deliver(self, delivery: Delivery) -> None:
        """A message of a log, in offset order: to its subscribers, then into the log."""
        stream = self.streams[delivery.stream]  # type: ignore[index]
        if delivery.epoch != stream.epoch:  # pragma: no cover - the broker said otherwise
            logger.debug("history %r: a message of another epoch dropped", stream.pattern)
            return
        subs = stream.routes.match(delivery.routing_key)
        if subs:
            if stream.active:
                plain = []
                for sub in subs:
                    if type(sub) is Catcher:
                        sub.catch(delivery)
                    else:
                        plain.append(sub)
                self._fan_out(delivery, plain)  # type: ignore[arg-type]
            else:
                self._fan_out(delivery, subs)  # type: ignore[arg-type]
        # Into the log last: a resume positioned by this entry takes it from the log.
        stream.append(delivery)

    # --- topics ----------------------------------------------------------------------------

    def stream_for(self, topic: str) -> HistoryStream | None:
        """The log serving ``topic``: the first whose pattern matches every key it can."""
        for stream in self.streams:
            if pattern_covers(stream.pattern, topic):
                return stream
        return None

    def serves(self, sub: Subscription, topic: str) -> bool:
        serving = self._serving.get(sub)
        return serving is not None and topic in serving

    @property
    def overlapping(self) -> bool:
        return bool(self._dual)

    def without_logged(self, routing_key: str, subs: set[Subscription]) -> set[Subscription]:
        """``subs`` less those that get ``routing_key`` from a log as well."""
        logged: set[object] = set()
        for stream in self.streams:
            if len(stream.routes):
                logged |= stream.routes.match(routing_key)
        return subs - logged if logged else subs

    def leave(self, sub: Subscription, topics: list[str], joined: Iterable[str]) -> list[str]:
        """Leave the history topics among ``topics``; returns the others."""
        serving = self._serving.get(sub)
        if not serving:
            return topics
        rest = []
        for topic in topics:
            stream = serving.pop(topic, None)
            if stream is None:
                rest.append(topic)
            else:
                stream.routes.discard(topic, sub)
        if not serving:
            del self._serving[sub]
        self._update_dual(sub, joined)
        return rest

    def _update_dual(self, sub: Subscription, joined: Iterable[str]) -> None:
        serving = self._serving.get(sub)
        dual = serving is not None and any(
            patterns_overlap(queued, logged)
            for queued in joined
            if queued not in serving
            for logged in serving
        )
        if dual:
            self._dual.add(sub)
        else:
            self._dual.discard(sub)

    def unavailable(self, stream: HistoryStream) -> str:
        return f"history {stream.pattern!r} of broker {self._broker_name!r} is not available yet"

    # --- joins -----------------------------------------------------------------------------

    def plan(self, sub: Subscription, result: JoinResult, joined: set[str]) -> JoinPlan:
        return JoinPlan(self, sub, result, joined)

    async def wait_ready(self, stream: HistoryStream) -> bool:
        """Wait (up to ``resume_timeout``) for the broker to start the log's live flow."""
        try:
            async with asyncio.timeout(stream.config.resume_timeout):
                while not stream.ready:
                    await asyncio.shield(stream.changed())
        except TimeoutError:
            return False
        return True

    async def run(self, resume: Resume) -> None:
        """Bring ``resume`` to be positioned, or its topics failed, within its timeout."""
        stream, log = resume.stream, resume.stream.log
        if stream.authoritative:
            # The log is the whole history: what it does not have, nobody has.
            resume.fail([t for t in resume.recovering if resume.positions[t] > log.last], AHEAD)
            resume.fail(
                [t for t in resume.recovering if not log.covers(resume.positions[t])],
                LEFT_RETENTION,
            )
            stream.try_position(resume)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + stream.config.resume_timeout
        try:
            async with asyncio.timeout_at(deadline):
                # A process a little behind the one the client came from: wait for it.
                while resume.recovering and resume.furthest > log.last:
                    await asyncio.shield(stream.changed())
                if resume.recovering and not stream.try_position(resume):
                    await self._backfill(stream, resume.start)
                    if resume.recovering and not stream.try_position(resume):
                        await self._replay(resume)
        except TimeoutError:
            if resume.positioned_at is None:
                late = [t for t in resume.recovering if resume.positions[t] > log.last]
                resume.fail(late, AHEAD)
                resume.fail(resume.recovering, TIMED_OUT)

    async def close(self) -> None:
        tasks = list(self._backfills.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _backfill_soon(self, stream: HistoryStream, start: int) -> asyncio.Task[None]:
        task = self._backfills.get(stream)
        if task is None:
            task = self._backfills[stream] = asyncio.ensure_future(self._read_back(stream, start))
            task.add_done_callback(lambda _: self._backfills.pop(stream, None))
        return task

    async def _backfill(self, stream: HistoryStream, start: int) -> None:
        """Read ``stream`` back from the broker into its log down to ``start``, if it fits:
        one read per log at a time, whatever the number of resumes waiting for it."""
        log = stream.log
        while not log.covers(start):
            running = self._backfills.get(stream)
            if running is None and log.base - start > stream.config.cache_messages - len(log):
                return  # too far back for memory: each resume replays on its own
            task = running or self._backfill_soon(stream, start)
            await asyncio.shield(task)
            if running is None:
                return  # ours: done, whether it got there or not

    async def _read_back(self, stream: HistoryStream, start: int) -> None:
        log, epoch = stream.log, stream.epoch
        room = stream.config.cache_bytes - log.bytes
        read: list[Delivery] = []
        size = 0
        first: int | None = None

        def handler(offset: int, delivery: Delivery | None) -> bool:
            nonlocal first, size
            if stream.epoch != epoch:
                return False
            if first is None:
                first = offset
            if log.covers(offset):
                # Everything after ``offset`` is in the log already: join the two, now.
                log.prepend(read, first - 1)
                return False
            if delivery is not None:
                read.append(delivery)
                size += len(delivery.body) + len(delivery.routing_key)
                if size > room:
                    return False  # more than memory would keep
            return True

        try:
            async with self._replays:
                if not log.covers(start):
                    self.backfills += 1
                    self.reads_running += 1
                    try:
                        await self.source.replay(stream.index, start, handler)
                    finally:
                        self.reads_running -= 1
        except BrokerError as exc:
            logger.debug("history %r: reading back failed: %s", stream.pattern, exc)

    async def _replay(self, resume: Resume) -> None:
        """Read RabbitMQ from the oldest position until the replay meets the log."""
        stream = resume.stream
        positioned: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_positioned() -> None:
            if not positioned.done():
                positioned.set_result(None)

        resume.on_positioned = on_positioned
        stream.waiting.append(resume)
        first = True

        def handler(offset: int, delivery: Delivery | None) -> bool:
            nonlocal first
            if resume.positioned_at is not None or resume.over_limit is not None:
                return False
            if first:
                first = False
                # The replay starts at the oldest position: if that entry is gone, so is
                # everything up to the first one retained.
                lost = [t for t in resume.recovering if resume.positions[t] < offset]
                resume.fail(lost, LEFT_RETENTION)
            if not resume.recovering:
                return False
            if delivery is not None and not resume.keep(delivery):
                return False
            resume.read_up_to = offset
            if stream.try_position(resume):
                return False
            # Ahead of this process's live flow: it brings the rest, and positions us.
            return offset <= stream.log.last

        async with self._replays:
            if resume.positioned_at is not None or not resume.recovering:
                return
            self.broker_replays += 1
            self.reads_running += 1
            task = asyncio.ensure_future(self.source.replay(stream.index, resume.start, handler))
            try:
                await asyncio.wait({task, positioned}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not task.done():
                    task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                self.reads_running -= 1
            if not task.cancelled() and (exc := task.exception()) is not None:
                reason = str(exc) if isinstance(exc, BrokerError) else type(exc).__name__
                if not isinstance(exc, BrokerError):
                    logger.error("replaying history %r failed", stream.pattern, exc_info=exc)
                resume.fail(resume.recovering, f"replay failed: {reason}")
                return
        if resume.recovering and resume.over_limit is None:
            await positioned


class JoinPlan:
    """The history topics of one join command, and its resumes (one per log)."""

    def __init__(
        self, histories: Histories, sub: Subscription, result: JoinResult, joined: set[str]
    ) -> None:
        self.histories = histories
        self.sub = sub
        self.result = result
        self.joined = joined
        #: The history topics joined by this command, and the log serving each.
        self.topics: dict[str, HistoryStream] = {}
        self.resumes: dict[HistoryStream, Resume] = {}
        self._turn = False

    async def add(self, topic: str, position: Position | None) -> bool | None:
        """Take ``topic`` if a log serves it: ``True`` joined, ``False`` refused (the
        reason is in the result), ``None`` not a history topic."""
        histories = self.histories
        stream = histories.stream_for(topic)
        if stream is None:
            return None
        if not stream.ready and not await histories.wait_ready(stream):
            self.result.refuse(topic, histories.unavailable(stream))
            return False
        self.topics[topic] = stream
        if position is None:
            return True
        if position.epoch != stream.epoch:
            self.result.resumed[topic] = EPOCH_CHANGED
        elif self._overlaps_joined(stream, topic):
            # It receives some of those messages already: a replay would repeat them.
            self.result.resumed[topic] = ALREADY_JOINED
        else:
            resume = self.resumes.get(stream)
            if resume is None:
                resume = self.resumes[stream] = Resume(stream, {})
                stream.active.add(resume)
            resume.positions[topic] = position.offset
        return True

    def _overlaps_joined(self, stream: HistoryStream, topic: str) -> bool:
        serving = self.histories._serving.get(self.sub, {})
        return any(s is stream and patterns_overlap(t, topic) for t, s in serving.items())

    async def resume(self) -> None:
        if not self.resumes:
            return
        for resume in self.resumes.values():
            await self.histories.run(resume)
        # One resume's answer and replay at a time, each after a turn of the event loop:
        # a thousand clients resuming together then take their turns between live
        # deliveries, instead of one long turn of the loop that holds them up. Held until
        # release(), at the end of the join, whose answer and replay the callback writes
        # in that same step.
        await self.histories.turn.acquire()
        self._turn = True

    def finish(self) -> None:
        """Synchronously: the subscription takes its place in the logs' routing tables
        (a catcher's, for a resume), and the replayed frames are added to the result."""
        histories, sub, result = self.histories, self.sub, self.result
        if self.topics:
            serving = histories._serving.setdefault(sub, {})
            for topic, stream in self.topics.items():
                stream.routes.add(topic, sub)
                serving[topic] = stream
        histories._update_dual(sub, self.joined)
        for resume in self.resumes.values():
            resume.stream.release(resume)
            entries = resume.result()
            for topic in resume.positions:
                reason = resume.failed.get(topic)
                result.resumed[topic] = reason
                if reason is None:
                    histories.recovered += 1
                else:
                    histories.unrecovered += 1
            for delivery in entries:
                frame = histories._encode(delivery, sub.encoder)
                if frame is not None:
                    result.replay.append(frame)
            histories.replayed += len(entries)
        for topic, stream in self.topics.items():
            if result.resumed.get(topic, "") is not None:  # not recovered, or no position
                assert stream.epoch is not None
                result.positions[topic] = (stream.log.last, stream.epoch)

    def release(self) -> None:
        for resume in self.resumes.values():
            resume.stream.release(resume)
        if self._turn:
            self._turn = False
            self.histories.turn.release()
