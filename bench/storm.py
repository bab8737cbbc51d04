"""``python -m bench.storm``: many clients resuming at once on a process that just started.

Issue 15 asks that 1,000 clients resuming together after a restart neither starve live
delivery nor grow memory without bound. Process A (``rabbitsocks serve``, history on a
stream of this run's own) takes N clients (half bare WebSocket, half Socket.IO), which
join a topic and receive ``--before`` messages; then every client drops, ``--missed``
messages are published, A stops, B starts, and all N reconnect to B at once with their
positions. Meanwhile a bystander on B receives a live message every 20 ms on another
history topic.

It prints: how long until every client had its ``@resume`` and its replay, how many were
recovered, the bystander's latency during the storm (publish to receipt), B's RSS before
and after, and B's reads of RabbitMQ (from /metrics). It asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.flaky import config_text, delete_stream, metrics, open_wire, save, start_server
from bench.procstat import rss_bytes
from bench.targets import ROOT, free_port, wait_listening

PUBLISH = """
import sys, time, pika
url, topic, count, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.confirm_delivery()
start = time.monotonic()
for seq in range(count):
    delay = start + seq / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    # CLOCK_MONOTONIC is one clock for every process of the machine.
    channel.basic_publish("amq.topic", topic, f"{seq} {time.monotonic()}".encode())
connection.close()
"""


async def publish(url: str, topic: str, count: int, rate: float = 500.0) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PUBLISH, url, topic, str(count), str(rate)
    )
    await proc.wait()


async def serve(workdir: Path, name: str, url: str, stream: str, n: int) -> tuple[Any, int, int]:
    port, admin = free_port(), free_port()
    config = workdir / f"{name}.yaml"
    config.write_text(config_text(port, admin, url, stream, connections=n + 100))
    log = workdir / f"{name}.log"
    proc = await asyncio.to_thread(start_server, ROOT / ".venv/bin/rabbitsocks", config, log)
    await wait_listening(port, proc, log, 30)
    return proc, port, admin


async def main_async(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run = uuid.uuid4().hex[:8]
    stream = f"rabbitsocks-bench-storm-{run}"
    topic, live = f"flaky.{run}", f"flaky.{run}.live"
    workdir = Path(tempfile.mkdtemp(prefix="rs-storm-"))
    procs = []
    try:
        a, port_a, _ = await serve(workdir, "a", args.amqp_url, stream, args.n)
        procs.append(a)
        await asyncio.sleep(2)  # the stream attached
        kinds = ["ws" if i % 2 == 0 else "sio" for i in range(args.n)]
        gate = asyncio.Semaphore(200)

        async def first_join(kind: str) -> Any:
            async with gate:
                wire = await open_wire(kind, port_a)
                wire.send({"command": "join", "topics": [topic]})
                await wire.frames.get()  # @join
                return wire

        wires = await asyncio.gather(*(first_join(k) for k in kinds))
        await publish(args.amqp_url, topic, args.before)
        last: list[tuple[str, int]] = []
        for wire in wires:
            frame: dict[str, Any] = {}
            for _ in range(args.before):
                frame = await asyncio.wait_for(wire.frames.get(), 30)
            last.append((frame["epoch"], frame["offset"]))
            wire.drop()
        await publish(args.amqp_url, topic, args.missed)
        a.terminate()
        await asyncio.to_thread(a.wait, 15)
        b, port_b, admin_b = await serve(workdir, "b", args.amqp_url, stream, args.n)
        procs.append(b)
        await asyncio.sleep(2)  # attached, and its memory filled from the stream
        rss_before = rss_bytes(b.pid)
        before = await metrics(admin_b)
        # The bystander has a process of its own: in this one, the clients' frames would
        # hold its reads up and its latency would be ours, not the server's.
        bystander = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.storm", "--bystander", str(port_b), "--topic", live,
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert bystander.stdout is not None
        assert bystander.stdin is not None
        await bystander.stdout.readline()  # joined
        stop = asyncio.Event()

        async def live_flow() -> list[float]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", PUBLISH, args.amqp_url, live, "100000", "50",
            )  # fmt: skip
            await stop.wait()
            proc.terminate()
            await proc.wait()
            return []

        flow = asyncio.create_task(live_flow())
        await asyncio.sleep(1)
        bystander.stdin.write(b"mark\n")  # the storm starts
        await bystander.stdin.drain()
        started = time.monotonic()
        done: list[float] = []
        recovered = 0

        async def resume(kind: str, position: tuple[str, int]) -> None:
            nonlocal recovered
            wire = await open_wire(kind, port_b)
            if args.no_resume:  # the same storm of connections and joins, nothing replayed
                wire.send({"command": "join", "topics": [topic]})
                await wire.frames.get()  # @join
                done.append(time.monotonic() - started)
                wire.drop()
                return
            epoch, offset = position
            wire.send(
                {
                    "command": "join",
                    "topics": [topic],
                    "since": {topic: {"offset": offset, "epoch": epoch}},
                }
            )
            await wire.frames.get()  # @join
            answer = await asyncio.wait_for(wire.frames.get(), 60)
            if answer is None or answer["topic"] != "@resume":
                raise RuntimeError(f"expected @resume, got {answer!r}")
            if answer["recovered"]:
                recovered += 1
                for _ in range(args.missed):
                    await asyncio.wait_for(wire.frames.get(), 60)
            done.append(time.monotonic() - started)
            wire.drop()

        await asyncio.gather(*(resume(k, p) for k, p in zip(kinds, last, strict=True)))
        storm = time.monotonic() - started
        bystander.stdin.write(b"mark\n")  # the storm is over
        await bystander.stdin.drain()
        await asyncio.sleep(1)
        stop.set()
        await flow
        bystander.stdin.write(b"end\n")
        await bystander.stdin.drain()
        phases = json.loads(await bystander.stdout.readline())
        await bystander.wait()
        after = await metrics(admin_b)
        rss_after = rss_bytes(b.pid)
        since_start = {k: v for k, v in after.items() if "reads_total" in k}
        calm, during = phases[0], sorted(phases[1])
        reads = {k: after.get(k, 0) - before.get(k, 0) for k in after if "reads_total" in k}
        result = {
            "clients": args.n,
            "missed_each": args.missed,
            "recovered": recovered,
            "storm_seconds": round(storm, 2),
            "resumed_p50_s": round(statistics.median(done), 3),
            "resumed_max_s": round(max(done), 3),
            "bystander_ms_before_p50": round(statistics.median(calm or [0]), 1),
            "bystander_ms_during_p50": round(statistics.median(during or [0]), 1),
            "bystander_ms_during_max": round(during[-1] if during else 0, 1),
            "rss_mib_before": round(rss_before / 2**20, 1),
            "rss_mib_after": round(rss_after / 2**20, 1),
            "reads_of_rabbitmq_storm": reads,
            "reads_of_rabbitmq_since_start": since_start,
        }
        for key, value in result.items():
            print(f"  {key:26} {value}")
        save("storm", {"args": vars(args), "result": result}, workdir)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 15)
        await delete_stream(args.amqp_url, stream)


async def bystander(port: int, topic: str) -> None:
    """A client of ``topic`` in a process of its own: latencies (publish to receipt, ms) per
    phase, the phases separated by lines on stdin; printed as JSON at ``end``."""
    wire = await open_wire("ws", port)
    wire.send({"command": "join", "topics": [topic]})
    await wire.frames.get()
    print("joined", flush=True)
    phases: list[list[float]] = [[]]
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def read() -> None:
        while True:
            frame = await wire.frames.get()
            if frame is None:
                return
            sent = float(frame["payload"].split()[1])
            phases[-1].append((time.monotonic() - sent) * 1000)

    task = asyncio.create_task(read())
    while await reader.readline() != b"end\n":
        phases.append([])
    task.cancel()
    print(json.dumps(phases[1:3]), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__)
    p.add_argument("-n", type=int, default=1000, help="clients resuming at once (1,000)")
    p.add_argument("--before", type=int, default=20, help="messages before the drop")
    p.add_argument("--missed", type=int, default=100, help="messages each client misses")
    p.add_argument("--no-resume", action="store_true", help="join without since (baseline)")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    p.add_argument("--bystander", type=int, help=argparse.SUPPRESS)
    p.add_argument("--topic", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bystander:
        asyncio.run(bystander(args.bystander, args.topic))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
