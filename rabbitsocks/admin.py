"""The admin endpoint: Prometheus metrics, liveness and readiness, for operators.

``GET /metrics``  Prometheus text format, from a registry of our own (so that several
                  servers in one process, as in tests, do not collide).
``GET /health``   200 while the process is serving: for liveness probes.
``GET /ready``    200 when every listener accepts connections and every broker is
                  connected, else 503 with the reasons: for load balancers and readiness.

Metrics are read from the plain counters the server keeps (``stats``, the hubs, the RPC
service, ``GcPauses``) when they are scraped; nothing on the hot path touches
prometheus-client.
"""

from __future__ import annotations

import bisect
import gc
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from rabbitsocks.rpc.endpoints import RpcEndpoints
from rabbitsocks.services import Services
from rabbitsocks.stats import PROBE_BUCKETS, ListenerStats

__all__ = ["AdminEndpoint", "GcPauses", "Observed", "ServerCollector"]


class ObservedListener(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def stats(self) -> ListenerStats: ...


class Observed(Protocol):
    """What the admin endpoint reads of the server it reports on (``server.Server``)."""

    @property
    def listeners(self) -> Sequence[ObservedListener]: ...

    @property
    def services(self) -> Services: ...

    @property
    def rpc(self) -> RpcEndpoints | None: ...

    def unready(self) -> list[str]:
        """Why the server should not get traffic now (empty: ready)."""
        ...


class GcPauses(Collector):
    """How long Python's cycle collector stops the event loop, by generation.

    A full (generation 2) collection scans every tracked object, some 65 per connection:
    tens of milliseconds per thousand connections, during which no frame goes out. This
    is where the latency tail of a busy process comes from; see docs/performance.md.
    """

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

    def __init__(self) -> None:
        self._counts = [[0] * (len(self.BUCKETS) + 1) for _ in range(3)]
        self._sums = [0.0, 0.0, 0.0]
        self._started = 0.0

    def install(self) -> None:
        gc.callbacks.append(self._observe)

    def uninstall(self) -> None:
        if self._observe in gc.callbacks:
            gc.callbacks.remove(self._observe)

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = min(info.get("generation", 2), 2)
        self._sums[generation] += took
        self._counts[generation][bisect.bisect_left(self.BUCKETS, took)] += 1

    def collect(self) -> Iterator[Metric]:
        pauses = HistogramMetricFamily(
            "rabbitsocks_gc_pause_seconds",
            "Pauses of Python's cycle collector (the event loop stands still), by generation.",
            labels=["generation"],
        )
        for generation, counts in enumerate(self._counts):
            buckets: list[tuple[str, float]] = []
            total = 0
            for bound, count in zip((*self.BUCKETS, float("inf")), counts, strict=True):
                total += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
            pauses.add_metric([str(generation)], buckets, self._sums[generation])
        yield pauses
        yield GaugeMetricFamily(
            "rabbitsocks_gc_frozen_objects",
            "Objects moved out of the collector's sight at start-up (gc.freeze).",
            value=gc.get_freeze_count(),
        )


class ServerCollector(Collector):
    """Turns the server's counters into metric families at scrape time."""

    def __init__(self, server: Observed) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        connections = GaugeMetricFamily(
            "rabbitsocks_connections", "Open connections.", labels=["listener", "transport"]
        )
        opened = CounterMetricFamily(
            "rabbitsocks_connections_opened",
            "Connections opened.",
            labels=["listener", "transport"],
        )
        slow = CounterMetricFamily(
            "rabbitsocks_slow_consumer_disconnects",
            "Connections closed because they did not read fast enough (4008).",
            labels=["listener"],
        )
        frames_in = CounterMetricFamily(
            "rabbitsocks_frames_in", "Frames received from clients.", labels=["listener"]
        )
        frames_sent = CounterMetricFamily(
            "rabbitsocks_frames_sent",
            "Frames sent by callbacks (answers; fan-out is rabbitsocks_deliveries).",
            labels=["listener"],
        )
        bytes_sent = CounterMetricFamily(
            "rabbitsocks_frame_bytes_sent",
            "Bytes written to clients: every frame, fan-out included, as its transport frames it.",
            labels=["listener"],
        )
        passed_on = CounterMetricFamily(
            "rabbitsocks_worker_requests_passed",
            "Requests of another worker's Socket.IO session passed to it (serve --workers),"
            " by how: hand-off (the socket), relay (TLS), forward (HTTP).",
            labels=["listener", "how"],
        )
        errors = CounterMetricFamily(
            "rabbitsocks_errors",
            "Errors by kind: callback exceptions, refused handshakes (origin, limit, auth).",
            labels=["listener", "kind"],
        )
        for listener in server.listeners:
            stats = listener.stats
            name = listener.name
            for transport in ("websocket", "socketio"):
                connections.add_metric(
                    [name, transport], stats.opened[transport] - stats.closed[transport]
                )
                opened.add_metric([name, transport], stats.opened[transport])
            slow.add_metric([name], stats.slow_consumers)
            frames_in.add_metric([name], stats.frames_in)
            frames_sent.add_metric([name], stats.frames_sent)
            bytes_sent.add_metric([name], stats.bytes_sent)
            for kind, count in sorted(stats.errors.items()):
                errors.add_metric([name, kind], count)
            for how, count in sorted(stats.passed_on.items()):
                passed_on.add_metric([name, how], count)
        yield from (connections, opened, slow, frames_in, frames_sent, bytes_sent, errors)
        yield passed_on
        yield from self._brokers()
        yield from self._rpc()

    def _brokers(self) -> Iterator[Metric]:
        services = self.server.services
        up = GaugeMetricFamily(
            "rabbitsocks_broker_connected", "1 when the broker is connected.", labels=["broker"]
        )
        topics = GaugeMetricFamily(
            "rabbitsocks_live_topics",
            "Distinct topics and patterns joined by local connections.",
            labels=["broker"],
        )
        bindings = GaugeMetricFamily(
            "rabbitsocks_broker_bindings",
            "Bindings of this process's queue on the broker.",
            labels=["broker"],
        )
        messages = CounterMetricFamily(
            "rabbitsocks_messages_in", "Messages received from the broker.", labels=["broker"]
        )
        deliveries = CounterMetricFamily(
            "rabbitsocks_deliveries", "Frames fanned out to connections.", labels=["broker"]
        )
        dropped = CounterMetricFamily(
            "rabbitsocks_messages_dropped",
            "Messages some subscribers' format could not carry (pubsub: a key not UTF-8).",
            labels=["broker"],
        )
        failovers = CounterMetricFamily(
            "rabbitsocks_broker_failovers",
            "Connections made to another node than the one the broker was on.",
            labels=["broker"],
        )
        probe_failures = CounterMetricFamily(
            "rabbitsocks_broker_probe_failures",
            "End-to-end probes that did not come back in time (the node was left).",
            labels=["broker"],
        )
        probe_seconds = HistogramMetricFamily(
            "rabbitsocks_broker_probe_seconds",
            "Round trip of the end-to-end probe: publish to our own queue, delivery back.",
            labels=["broker"],
        )
        joins = CounterMetricFamily("rabbitsocks_joins", "Topics joined.", labels=["broker"])
        leaves = CounterMetricFamily("rabbitsocks_leaves", "Topics left.", labels=["broker"])
        for name, hub in services.hubs.items():
            up.add_metric([name], 1 if hub.connected else 0)
            topics.add_metric([name], hub.live_topics)
            rabbitmq = hub.broker.rabbitmq
            bound = len(rabbitmq.bindings) if rabbitmq is not None else hub.live_topics
            bindings.add_metric([name], bound)
            messages.add_metric([name], hub.messages_in)
            deliveries.add_metric([name], hub.deliveries_out)
            dropped.add_metric([name], hub.dropped)
            joins.add_metric([name], hub.joins)
            leaves.add_metric([name], hub.leaves)
            if rabbitmq is not None:
                probes = rabbitmq.probes
                failovers.add_metric([name], rabbitmq.failovers)
                probe_failures.add_metric([name], probes.failed)
                cumulative, running = [], 0
                bounds = (*PROBE_BUCKETS, float("inf"))
                for upper, count in zip(bounds, probes.buckets, strict=True):
                    running += count
                    cumulative.append((_bucket_label(upper), running))
                probe_seconds.add_metric([name], cumulative, probes.latency_sum)
        yield from (up, topics, bindings, messages, dropped, deliveries)
        yield from (joins, leaves, failovers, probe_failures, probe_seconds)
        yield from self._history()

    def _history(self) -> Iterator[Metric]:
        """Brokers with history patterns (docs/operations.md, "History streams")."""
        resumes = CounterMetricFamily(
            "rabbitsocks_history_resumes",
            "Topics joined with a position, by outcome (recovered true or false).",
            labels=["broker", "recovered"],
        )
        replayed = CounterMetricFamily(
            "rabbitsocks_history_replayed",
            "Messages replayed to resuming clients.",
            labels=["broker"],
        )
        reads = CounterMetricFamily(
            "rabbitsocks_history_reads",
            "Reads of RabbitMQ for history: a resume's own replay, or a log read back into"
            " memory (backfill).",
            labels=["broker", "kind"],
        )
        running = GaugeMetricFamily(
            "rabbitsocks_history_reads_running", "Reads of RabbitMQ under way.", labels=["broker"]
        )
        kept = GaugeMetricFamily(
            "rabbitsocks_history_messages_in_memory",
            "Messages of each history log kept in this process.",
            labels=["broker", "topics"],
        )
        offset = GaugeMetricFamily(
            "rabbitsocks_history_offset",
            "Offset of the last entry of each history log delivered in this process.",
            labels=["broker", "topics"],
        )
        for name, hub in self.server.services.hubs.items():
            history = hub.history
            if history is None:
                continue
            resumes.add_metric([name, "true"], history.recovered)
            resumes.add_metric([name, "false"], history.unrecovered)
            replayed.add_metric([name], history.replayed)
            reads.add_metric([name, "resume"], history.broker_replays)
            reads.add_metric([name, "backfill"], history.backfills)
            running.add_metric([name], history.reads_running)
            for stream in history.streams:
                kept.add_metric([name, stream.pattern], len(stream.log))
                offset.add_metric([name, stream.pattern], stream.log.last)
        yield from (resumes, replayed, reads, running, kept, offset)

    def _rpc(self) -> Iterator[Metric]:
        rpc = self.server.rpc
        calls = CounterMetricFamily(
            "rabbitsocks_rpc_calls", "RPC calls by method and result.", labels=["method", "result"]
        )
        async_failed = CounterMetricFamily(
            "rabbitsocks_rpc_async_failures", "PublishAsync messages that failed after ok=true."
        )
        goridge_open = GaugeMetricFamily(
            "rabbitsocks_rpc_goridge_connections", "Open goridge RPC connections."
        )
        goridge_cut = CounterMetricFamily(
            "rabbitsocks_rpc_goridge_disconnects",
            "goridge connections refused or closed by the server, by reason: max_connections,"
            " read_timeout, idle_timeout.",
            labels=["reason"],
        )
        if rpc is not None:
            for (method, result), count in sorted(rpc.service.calls.items()):
                calls.add_metric([method, result], count)
            async_failed.add_metric([], rpc.service.stats.failed)
        goridge = rpc.goridge if rpc is not None else None
        goridge_open.add_metric([], goridge.connections if goridge is not None else 0)
        for reason in ("max_connections", "read_timeout", "idle_timeout"):
            count = goridge.stats.disconnects[reason] if goridge is not None else 0
            goridge_cut.add_metric([reason], count)
        yield from (calls, async_failed, goridge_open, goridge_cut)


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class AdminEndpoint:
    """``/metrics``, ``/health`` and ``/ready`` on their own (loopback) port."""

    def __init__(self, server: Observed) -> None:
        self.server = server
        self.registry = CollectorRegistry()
        self.registry.register(ServerCollector(server))
        self.gc_pauses = GcPauses()
        self.registry.register(self.gc_pauses)
        self.gc_pauses.install()
        self.publish_latency = Histogram(
            "rabbitsocks_rpc_publish_seconds",
            "Time to answer an RPC Publish, the broker's confirms included.",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.started = time.time()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        return app

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "uptime": round(time.time() - self.started, 1)})

    async def ready(self, request: web.Request) -> web.Response:
        """200 when ready, else 503. A connected AMQP broker whose probe has not passed on
        its current node (or failed) is not ready: connected is not delivering."""
        problems = self.server.unready()
        brokers: dict[str, dict[str, Any]] = {}
        for name, hub in self.server.services.hubs.items():
            brokers[name] = {"connected": hub.connected}
            rabbitmq = hub.broker.rabbitmq
            if rabbitmq is not None:
                brokers[name]["url"] = rabbitmq.safe_url  # password masked
                probes = rabbitmq.probes
                reason = rabbitmq.unready
                if hub.connected and reason is not None:
                    problems.append(f"broker {name}: {reason}")
                brokers[name]["probe"] = reason or "ok"
                if probes.last_latency is not None:
                    brokers[name]["probe_seconds"] = round(probes.last_latency, 4)
        body = {"ready": not problems, "problems": problems, "brokers": brokers}
        return web.json_response(body, status=200 if not problems else 503)
