"""``python -m bench``: every scenario against every target in one invocation.

Prints a table per scenario and writes everything measured to
``bench/results/bench-<time>.json`` (server logs and generated configurations beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench import private_broker, sendfloor
from bench.loadgen import node_available
from bench.private_broker import PrivateBroker
from bench.report import render
from bench.runner import Plan, Scenario, run_one, suspect, wait_broker
from bench.targets import (
    DEFAULT_TARGETS,
    ROOT,
    TARGETS,
    Settings,
    Target,
    add_baseline,
    rabbitmq_node,
)

__all__ = ["main"]

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("one-100", 100),
        Scenario("one-1k", 1_000),
        Scenario("one-5k", 5_000),
        Scenario("one-15k", 15_000, only=("rs-ws",)),
        Scenario("topics-1k", 1_000, topics=10),
    )
}
DEFAULT_SCENARIOS = ("one-100", "one-1k", "one-5k", "topics-1k", "one-15k")
QUICK_SCENARIOS = ("one-100", "one-1k")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Fan-out benchmark: rabbitsocks against RabbitMQ Web-STOMP, "
        "python-socketio with AsyncAioPikaManager, and a raw aiohttp floor.",
    )
    p.add_argument("--quick", action="store_true", help="N=100 and 1,000 only, short phases")
    p.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated, from: {', '.join(TARGETS)} (default: {','.join(DEFAULT_TARGETS)})",
    )
    p.add_argument(
        "--scenarios",
        help=f"comma-separated, from: {', '.join(SCENARIOS)}"
        f" (default: {','.join(DEFAULT_SCENARIOS)}; --quick: {','.join(QUICK_SCENARIOS)})",
    )
    p.add_argument("-n", type=int, help="a custom scenario: N subscribers (with --topics)")
    p.add_argument("--topics", type=int, default=1, help="K topics of the custom scenario")
    p.add_argument("--size", type=int, default=128, help="message body bytes (default 128)")
    p.add_argument("--loadgen-workers", type=int, default=3, help="load generator processes (3)")
    p.add_argument(
        "--client",
        choices=("raw", "ws"),
        default="raw",
        help="load generator engine: raw (a minimal RFC 6455 client, default) or node ws",
    )
    p.add_argument(
        "--latency-rate",
        type=float,
        default=20_000,
        help="deliveries/s offered in the latency phase (default 20,000)",
    )
    p.add_argument("--latency-seconds", type=float, help="latency phase length (3; quick 2)")
    p.add_argument(
        "--deliveries", type=int, help="deliveries in the throughput phase (150,000; quick 100,000)"
    )
    p.add_argument(
        "--private-broker",
        action="store_true",
        help="run every target against a private RabbitMQ node started with this process's"
        " open-files limit (see bench/private_broker.py), not the shared one",
    )
    p.add_argument(
        "--drain-max",
        type=float,
        help="seconds a phase may drain after its last confirm (10); later deliveries are lost",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each target R times, interleaved, and report the median run",
    )
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    p.add_argument("--stomp-url", default="ws://127.0.0.1:15674/ws")
    p.add_argument("--management-url", default="http://guest:guest@127.0.0.1:15672/")
    p.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop of the Python servers (auto: uvloop when installed, as rabbitsocks)",
    )
    p.add_argument("--log-level", default="warning", help="rabbitsocks' log level (warning)")
    p.add_argument("--profile", action="store_true", help="py-spy the Python servers (throughput)")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=9.5,
        help="start no new run past this (default 9.5; the default run takes less)",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        help="another rabbitsocks checkout (with its .venv): adds targets rs-ws-base and"
        " rs-sio-base, the code before a change measured in the same run",
    )
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    return p


def _raise_open_files(need: int) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft < need:
        return f"warning: open-files limit {soft} < {need}: raise `ulimit -n` for large N"
    return ""


def _environment(settings: Settings) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "open_files": resource.getrlimit(resource.RLIMIT_NOFILE),
        "loop": settings.loop,
    }
    try:
        env["node"] = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        node = rabbitmq_node(settings.management_url)
        env["rabbitmq"] = {
            k: node.get(k)
            for k in ("name", "os_pid", "fd_total", "sockets_total", "sockets_used", "mem_used")
        }
    except (OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
        env["rabbitmq"] = f"unavailable: {exc}"
    try:
        import importlib.metadata as md

        env["packages"] = {
            name: md.version(name)
            for name in ("rabbitsocks", "aiohttp", "aio-pika", "aiormq", "python-socketio",
                         "python-engineio", "orjson", "uvloop")
        }  # fmt: skip
    except Exception as exc:  # metadata is a nicety, never a reason to fail
        env["packages"] = f"unavailable: {exc}"
    return env


async def _main(args: argparse.Namespace) -> int:
    problem = node_available()
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.baseline is not None:
        for name in add_baseline(args.baseline.resolve()):
            if name not in targets:
                targets.append(name)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        print(f"bench: unknown target(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    if args.n:
        scenarios = [Scenario(f"custom-{args.n}x{args.topics}", args.n, args.topics)]
    else:
        names = (
            args.scenarios.split(",")
            if args.scenarios
            else (QUICK_SCENARIOS if args.quick else DEFAULT_SCENARIOS)
        )
        missing = [s for s in names if s not in SCENARIOS]
        if missing:
            print(f"bench: unknown scenario(s) {', '.join(missing)}", file=sys.stderr)
            return 2
        scenarios = [SCENARIOS[s] for s in names]
    plan = Plan(
        size=args.size,
        workers=args.loadgen_workers,
        client=args.client,
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds or (2.0 if args.quick else 3.0),
        deliveries=args.deliveries or (100_000 if args.quick else 150_000),
        profile=args.profile,
    )
    plan = replace(plan, drain_max=args.drain_max or 10.0)
    if args.quick:
        plan = replace(plan, connect_total=60.0)
    warning = _raise_open_files(max(s.n for s in scenarios) + 200)
    if warning:
        print(warning)
    private = PrivateBroker() if args.private_broker else None
    if private is not None:
        print("bench: starting a private RabbitMQ node (rsbench@localhost, AMQP 5673)")
        await private.start()
        args.amqp_url, args.stomp_url = private_broker.AMQP_URL, private_broker.STOMP_URL
        args.management_url = private_broker.MANAGEMENT_URL
    try:
        return await _run(args, scenarios, targets, plan)
    finally:
        if private is not None:
            await private.stop()


async def _run(
    args: argparse.Namespace, scenarios: list[Scenario], targets: list[str], plan: Plan
) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.results / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        amqp_url=args.amqp_url,
        stomp_url=args.stomp_url,
        management_url=args.management_url,
        results=run_dir,
        loop=args.loop,
        log_level=args.log_level,
    )
    environment = _environment(settings)
    environment["private_broker"] = args.private_broker
    broker_pid = None
    if isinstance(environment.get("rabbitmq"), dict):
        broker_pid = int(environment["rabbitmq"]["os_pid"])
    print(f"bench: {len(scenarios)} scenario(s) x {len(targets)} target(s); results in {run_dir}")
    # The machine's own floor for the latency phase (bench/sendfloor.py), before any load.
    environment["send_floor"] = await asyncio.to_thread(sendfloor.measure, 1000)
    print(f"bench: {sendfloor.describe(environment['send_floor'])}")
    started = time.monotonic()
    report: dict[str, Any] = {
        "started": stamp,
        "argv": sys.argv[1:],
        "plan": asdict(plan),
        "environment": environment,
        "scenarios": [],
    }
    out_file = args.results / f"bench-{stamp}.json"
    tables = []
    for scenario in scenarios:
        print(f"== {scenario.title}")
        runs: dict[str, list[dict[str, Any]]] = {}
        for _ in range(args.repeat):  # interleaved, so a burst of noise hits every target
            for name in targets:
                if scenario.only and name not in scenario.only:
                    continue
                if time.monotonic() - started > args.max_minutes * 60:
                    if not runs.get(name):
                        runs[name] = [{"target": name, "skipped": "--max-minutes reached"}]
                    continue
                result = await _measure(TARGETS[name], scenario, plan, settings, broker_pid)
                runs.setdefault(name, []).append(result)
        results = [_median_run(attempts) for attempts in runs.values()]
        report["scenarios"].append({**asdict(scenario), "results": results})
        table = render(scenario.title, results)
        tables.append(table)
        print(table)
        print()
        report["seconds"] = time.monotonic() - started
        report["loadavg_end"] = os.getloadavg()
        out_file.write_text(json.dumps(report, indent=1, default=str))
    _print_profiles(report)
    print(f"bench: done in {time.monotonic() - started:.0f}s; JSON: {out_file}")
    (run_dir / "tables.txt").write_text("\n\n".join(tables) + "\n")
    return 0


def _median_run(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, with the others' key figures beside it."""
    if len(attempts) == 1:
        return attempts[0]

    def rate(r: dict[str, Any]) -> float:
        return float((r.get("throughput") or {}).get("deliveries_per_s") or 0.0)

    ordered = sorted(attempts, key=rate)
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["repeats"] = [
        {
            "throughput_deliveries_per_s": rate(r),
            "latency_p99_ms": ((r.get("latency") or {}).get("latency_ms") or {}).get("p99"),
            "server_cpu_s_per_million": (r.get("throughput") or {}).get("server_cpu_s_per_million"),
        }
        for r in attempts
    ]
    return chosen


async def _measure(
    target: Target, scenario: Scenario, plan: Plan, settings: Settings, broker_pid: int | None
) -> dict[str, Any]:
    """``run_one``, waiting for RabbitMQ first, and once more if the broker went away."""
    earlier: list[dict[str, Any]] = []
    while True:
        if target.uses_amqp and not await wait_broker(settings.amqp_url, 60):
            return {"target": target.name, "skipped": "RabbitMQ unreachable for 60 s"}
        result = await run_one(target, scenario, plan, settings, broker_pid)
        why = suspect(result) if target.uses_amqp else None
        if why is None or earlier:
            break
        print(f"  {target.name}: suspect result ({why}); measuring once more")
        earlier.append({"why": why, "result": result})
    if earlier:
        result["earlier_attempts"] = earlier
    if why is not None:
        result["suspect"] = why
    return result


def _print_profiles(report: dict[str, Any]) -> None:
    for scenario in report["scenarios"]:
        for r in scenario["results"]:
            profile = (r.get("throughput") or {}).get("profile")
            if not profile or not profile.get("samples"):
                continue
            print(f"== py-spy: {r['target']} on {scenario['name']} ({profile['samples']} samples)")
            for title, key in (
                ("by package", "packages"),
                ("self", "self"),
                ("inclusive", "inclusive"),
            ):
                print(f"  {title}:")
                for name, share in profile[key][:12]:
                    print(f"    {share:6.1%}  {name}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # aiormq logs a traceback when RabbitMQ closes the publisher's connection (someone
    # restarting a shared node); the run reports that itself.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    logging.getLogger("aio_pika").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        return 130
