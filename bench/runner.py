"""One run: one target, one scenario. Connect N, measure idle memory, then two phases.

::

    start server ─> RSS before ─> connect N subscribers ─> settle ─> RSS after
        ─> phase 0, latency:    `rate` messages/s for `seconds`, drain, read stats
        ─> phase 1, throughput: `count` messages as fast as confirms allow, drain, stats
        ─> close subscribers ─> stop server

A phase's CPU figures are the ``/proc`` CPU time deltas of the server, the RabbitMQ node,
the load generator processes and this process (the publisher) from the first publish to
the end of the drain. The drain ends when every open socket has what was published to its
topic, when nothing arrived for ``drain_idle`` seconds, or ``drain_max`` seconds after the
last publish, whichever comes first: every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import LoadGenerator
from bench.procstat import cpu_seconds, exists, machine_busy_seconds, tree_cpu_split, tree_rss_bytes
from bench.profile import summarize_raw
from bench.publish import AmqpPublisher, FloorPublisher
from bench.stats import Histogram
from bench.targets import Running, Settings, Target

__all__ = ["Plan", "Scenario", "run_one", "suspect", "wait_broker"]


@dataclass(frozen=True)
class Scenario:
    name: str
    n: int  # subscribers
    topics: int = 1  # K: subscriber i joins topic i % K
    only: tuple[str, ...] = ()  # target names, when not every target runs it

    @property
    def title(self) -> str:
        spread = "one topic" if self.topics == 1 else f"{self.topics} topics"
        return f"{self.name}: N={self.n:,} on {spread}"


@dataclass(frozen=True)
class Plan:
    size: int = 128  # message body bytes
    latency_rate: float = 20_000.0  # offered deliveries/s in the latency phase
    latency_seconds: float = 3.0
    deliveries: int = 100_000  # deliveries in the throughput phase
    max_messages_per_socket: int = 2_000  # keeps a backlog under the slow-consumer limits
    window: int = 256  # unconfirmed publishes in flight
    workers: int = 3
    client: str = "raw"  # load generator engine: raw (hand-rolled RFC 6455) or ws
    concurrency: int = 300  # handshakes in flight, all workers together
    connect_timeout: float = 15.0
    connect_total: float = 120.0
    settle: float = 2.0
    drain_idle: float = 3.0
    drain_max: float = 15.0
    profile: bool = False  # py-spy the server during the throughput phase
    profile_rate: int = 200


@dataclass
class _Clock:
    """CPU seconds of the processes a phase is measured on."""

    server: float
    server_sys: float
    broker: float
    loadgen: dict[int, float]
    publisher: float
    machine: float  # busy CPU seconds of the whole machine
    wall: float = field(default_factory=time.monotonic)


def _cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


def _sample(running: Running, broker_pid: int | None, gen: LoadGenerator) -> _Clock:
    server_user, server_sys = tree_cpu_split(running.pid)
    return _Clock(
        server=server_user + server_sys,
        server_sys=server_sys,
        broker=_cpu(broker_pid) if broker_pid != running.pid else 0.0,
        loadgen={pid: _cpu(pid) for pid in gen.pids},
        publisher=_cpu(os.getpid()),
        machine=machine_busy_seconds(),
    )


def _topics(scenario: Scenario, tag: str) -> list[str]:
    run = f"{os.getpid()}x{int(time.time() * 1000) % 10**8}"
    return [f"rsbench.{run}.{tag}.{k}" for k in range(scenario.topics)]


async def run_one(
    target: Target,
    scenario: Scenario,
    plan: Plan,
    settings: Settings,
    broker_pid: int | None,
    log: Any = print,
) -> dict[str, Any]:
    """Measure ``target`` on ``scenario``; never raises for a failure of the target."""
    tag = f"{scenario.name}-{target.name}"
    result: dict[str, Any] = {
        "target": target.name,
        "label": target.label,
        "scenario": scenario.name,
        "n": scenario.n,
        "topics": scenario.topics,
        "size": plan.size,
    }
    skip = target.skip_reason(settings, scenario.n)
    if skip is not None:
        result["skipped"] = skip
        log(f"  {target.name}: skipped: {skip}")
        return result
    started = time.monotonic()
    running: Running | None = None
    gen = LoadGenerator(plan.workers)
    publisher: AmqpPublisher | FloorPublisher | None = None
    try:
        running = await target.start(settings, tag, scenario.n)
        publisher = (
            FloorPublisher(running.publish_port)
            if running.publisher == "floor"
            else AmqpPublisher(settings.amqp_url, window=plan.window)
        )
        await publisher.check()
        await asyncio.sleep(0.5)
        rss_before = tree_rss_bytes(running.pid)
        await gen.start()
        topics = _topics(scenario, tag)
        connected = await gen.connect(
            target.client,
            running.url,
            topics,
            scenario.n,
            concurrency=plan.concurrency,
            timeout=plan.connect_timeout,
            total_timeout=plan.connect_total,
            engine=plan.client,
        )
        await asyncio.sleep(plan.settle)
        rss_after = tree_rss_bytes(running.pid)
        ok = connected["ok"]
        connected["rss_before"] = rss_before
        connected["rss_after"] = rss_after
        connected["rss_per_conn"] = (rss_after - rss_before) / ok if ok else None
        result["connect"] = connected
        log(
            f"  {target.name}: {ok:,}/{scenario.n:,} connected in {connected['seconds']:.1f}s"
            + (
                f", {connected['failed']:,} failed: {_top(connected['errors'])}"
                if connected["failed"]
                else ""
            )
        )
        if ok == 0:
            result["error"] = "no subscriber connected"
            return result
        per_topic = scenario.n / scenario.topics
        rate = max(1.0, plan.latency_rate / per_topic)
        latency_count = max(3, round(rate * plan.latency_seconds))
        per_socket = min(plan.max_messages_per_socket, max(10, round(plan.deliveries / scenario.n)))
        throughput_count = per_socket * scenario.topics
        phases = [("latency", rate, latency_count), ("throughput", None, throughput_count)]
        for number, (kind, phase_rate, count) in enumerate(phases):
            result[kind] = await _phase(
                number, kind, phase_rate, count, topics, plan, running, broker_pid, gen,
                publisher, settings, tag, target,
            )  # fmt: skip
            log(f"  {target.name}: {kind}: {_phase_line(result[kind])}")
    except Exception as exc:  # a target that fails is a result, not the end of the run
        detail = str(exc).strip().splitlines()
        result["error"] = f"{type(exc).__name__}: {detail[-1] if detail else ''}"[:300]
        result["error_detail"] = str(exc)[-3000:]
        log(f"  {target.name}: failed: {result['error']}")
    finally:
        with contextlib.suppress(Exception):
            await gen.close()
        if publisher is not None:
            with contextlib.suppress(Exception):
                await publisher.close()
        if running is not None:
            await running.stop()
            result["server_log"] = str(running.log) if running.log else None
            result["broker_outage"] = _outage(running.log)
            if running.process is not None:
                result["exit_code"] = running.process.returncode
    result["seconds"] = time.monotonic() - started
    return result


async def _phase(
    number: int,
    kind: str,
    rate: float | None,
    count: int,
    topics: list[str],
    plan: Plan,
    running: Running,
    broker_pid: int | None,
    gen: LoadGenerator,
    publisher: AmqpPublisher | FloorPublisher,
    settings: Settings,
    tag: str,
    target: Target,
) -> dict[str, Any]:
    await gen.phase(number)
    profiler = None
    if plan.profile and kind == "throughput" and running.process is not None:
        profiler = _start_profiler(running.pid, settings.results / f"{tag}.pyspy.txt", plan)
    before = _sample(running, broker_pid, gen)
    published = await publisher.run(topics, count, plan.size, number, rate)
    expected = dict(published.per_topic)
    previous = -1
    last_progress = end_publish = time.monotonic()
    while True:  # the drain: bounded by drain_idle and drain_max
        received, want = await gen.received(expected)
        now = time.monotonic()
        if received >= want:
            break
        if received > previous:
            previous, last_progress = received, now
        if now - last_progress > plan.drain_idle or now - end_publish > plan.drain_max:
            break
        await asyncio.sleep(0.1)
    after = _sample(running, broker_pid, gen)
    profile = None
    if profiler is not None:
        profile = _stop_profiler(*profiler)
    answers = await gen.stats(expected)
    return _phase_result(
        kind, rate, published, answers, before, after, profile, running, broker_pid
    )


def _phase_result(
    kind: str,
    rate: float | None,
    published: Any,
    answers: list[dict[str, Any]],
    before: _Clock,
    after: _Clock,
    profile: dict[str, Any] | None,
    running: Running,
    broker_pid: int | None,
) -> dict[str, Any]:
    hist = Histogram()
    delivered = 0
    lost = dup = stale = closed = short = 0
    close_codes: Counter[str] = Counter()
    first = last = 0.0
    for a in answers:
        hist.add_sparse(a["hist"], a["max_us"])
        delivered += a["received"]
        lost += a["lost"]
        dup += a["dup"]
        stale += a["stale"]
        closed += a["closed"]
        short += a["short_conns"]
        close_codes.update(a["close_codes"])
        if a["received"]:
            first = a["first_us"] if not first else min(first, a["first_us"])
            last = max(last, a["last_us"])
    wall = after.wall - before.wall
    span = (last - published.first_us) / 1e6 if delivered else 0.0
    server_cpu = after.server - before.server
    broker_cpu = after.broker - before.broker
    loadgen = {pid: after.loadgen.get(pid, 0.0) - t for pid, t in before.loadgen.items()}
    loadgen_cpu = sum(loadgen.values())

    def per_delivery(cpu: float) -> float | None:
        return cpu * 1e6 / delivered if delivered else None

    def ms(us: float | None) -> float | None:
        return None if us is None else us / 1000

    return {
        "offered_messages_per_s": rate,
        "published": published.published,
        "publish_failed": published.failed,
        "publish_unconfirmed": published.unconfirmed,
        "publish_errors": dict(published.errors),
        "publish_seconds": published.seconds,
        # From the first publish to the last confirm: how fast RabbitMQ took the messages.
        "confirm_seconds": (published.confirmed_us - published.first_us) / 1e6
        if published.confirmed_us
        else None,
        "delivered": delivered,
        "lost": lost,
        "duplicates": dup,
        "stale": stale,
        "short_sockets": short,
        "closed_sockets": closed,
        "close_codes": dict(close_codes),
        "deliveries_per_s": delivered / span if span > 0 else None,
        "span_seconds": span,
        "latency_ms": {
            "p50": ms(hist.percentile(50)),
            "p99": ms(hist.percentile(99)),
            "max": ms(hist.max_us if delivered else None),
        },
        "wall_seconds": wall,
        "server_cpu_s": server_cpu,
        # The kernel's part of it (system time): for the Python servers, mostly the TCP
        # send of each write.
        "server_kernel_share": (after.server_sys - before.server_sys) / server_cpu
        if server_cpu > 0
        else None,
        # The server's share of one core from the first publish to the last delivery:
        # near 100% (or more, for the multi-threaded beam.smp) means the server is the limit.
        "server_core_share": server_cpu / wall if wall else None,
        "server_cpu_s_per_million": per_delivery(server_cpu),
        "broker_cpu_s": broker_cpu,
        # None when there is no broker, or when the broker is the server (Web-STOMP).
        "broker_cpu_s_per_million": per_delivery(broker_cpu)
        if running.publisher == "amqp" and broker_pid not in (None, running.pid)
        else None,
        "loadgen_cpu_s": loadgen_cpu,
        "loadgen_core_share": loadgen_cpu / wall if wall else None,
        "loadgen_busiest_core_share": max(loadgen.values()) / wall if loadgen and wall else None,
        "publisher_cpu_s": after.publisher - before.publisher,
        # CPU the rest of the machine used meanwhile (other people's tests, say), in cores:
        # the benchmark had 2 cores minus this.
        "others_cores": max(
            0.0,
            (after.machine - before.machine)
            - server_cpu
            - broker_cpu
            - loadgen_cpu
            - (after.publisher - before.publisher),
        )
        / wall
        if wall
        else None,
        "loadavg": os.getloadavg(),
        "profile": profile,
    }


def _phase_line(p: dict[str, Any]) -> str:
    rate = p["deliveries_per_s"]
    lat = p["latency_ms"]
    cpu = p["server_cpu_s_per_million"]
    parts = [
        f"{p['delivered']:,} delivered",
        f"{rate:,.0f}/s" if rate else "-",
        f"p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms" if lat["p50"] is not None else "",
        f"lost {p['lost']:,}",
        f"server {cpu:.1f} us/delivery" if cpu is not None else "",
        f"loadgen {p['loadgen_core_share'] * 100:.0f}% of a core"
        if p["loadgen_core_share"]
        else "",
    ]
    return ", ".join(x for x in parts if x)


def _top(errors: dict[str, int]) -> str:
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    return "; ".join(f"{why} x{n}" for why, n in worst)


#: What the servers' logs say when RabbitMQ went away under them (the shared node is
#: stopped and started by other people's tests).
_OUTAGE_MARKERS = (
    "lost the connection",  # rabbitsocks
    "cannot connect",  # rabbitsocks
    "CONNECTION_FORCED",  # aiormq, when RabbitMQ stops its app
    "Connection refused",
    "Cannot receive from rabbitmq",  # python-socketio's AsyncAioPikaManager
)


def _outage(log: Path | None) -> bool:
    if log is None or not log.exists():
        return False
    text = log.read_text(errors="replace")
    return any(marker in text for marker in _OUTAGE_MARKERS)


def suspect(result: dict[str, Any]) -> str | None:
    """Why a result may be the broker's fault rather than the target's, or None."""
    if result.get("broker_outage"):
        return "the server logged a broker outage"
    if result.get("error"):
        return str(result["error"]).splitlines()[-1][:200]
    for kind in ("latency", "throughput"):
        phase = result.get(kind) or {}
        if phase.get("publish_failed"):
            # A nack or a closed channel or connection: RabbitMQ went away, most likely.
            return f"{phase['publish_failed']} publishes failed in the {kind} phase"
    return None


async def wait_broker(url: str, timeout: float) -> bool:
    """Wait (at most ``timeout`` seconds) until RabbitMQ accepts an AMQP connection."""
    deadline = time.monotonic() + timeout
    while True:
        publisher = AmqpPublisher(url)
        try:
            await publisher.check()
            return True
        except Exception:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(1.0)
        finally:
            with contextlib.suppress(Exception):
                await publisher.close()


def _start_profiler(pid: int, out: Path, plan: Plan) -> tuple[subprocess.Popen[bytes], Path] | None:
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists() or not exists(pid):
        return None
    proc = subprocess.Popen(
        [str(py_spy), "record", "--pid", str(pid), "--rate", str(plan.profile_rate),
         "--format", "raw", "--nonblocking", "--output", str(out), "--duration", "120"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.3)  # py-spy attaches before the first publish
    return proc, out


def _stop_profiler(proc: subprocess.Popen[bytes], out: Path) -> dict[str, Any] | None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    if not out.exists():
        return None
    summary = summarize_raw(out.read_text(errors="replace"))
    summary["file"] = str(out)
    return summary
