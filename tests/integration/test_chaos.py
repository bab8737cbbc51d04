"""``scripts/chaos`` in its short mode (issue 5, point 10): the bridge's AMQP connection is
force-closed under a steady publish stream; nothing may be lost while RabbitMQ is up.

The short mode closes the connection through the management API rather than restarting
RabbitMQ, which other tests share.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.pubsub import amqp_url, serve_env

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


async def run_chaos(*extra: str) -> dict[str, Any]:
    """``scripts/chaos --mode close-connection`` (4 s, the outage at 1.5 s); its report."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts" / "chaos"),
        *extra,
        "--mode",
        "close-connection",
        "--duration",
        "4",
        "--outage-at",
        "1.5",
        "--rate",
        "100",
        "--subscribers",
        "2",
        "--amqp-url",
        amqp_url(),
        "--timeout",
        "40",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=serve_env(),
        cwd=ROOT,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 50)
    finally:
        if process.returncode is None:  # SIGTERM: the script stops its bridge first
            process.terminate()
            try:
                await asyncio.wait_for(process.communicate(), 25)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.communicate()
    assert process.returncode == 0, out.decode() + err.decode()
    report: dict[str, Any] = json.loads(out)
    return report


async def test_chaos_short_mode_loses_nothing_while_rabbitmq_is_up() -> None:
    report = await run_chaos()
    assert report["ok"] is True
    assert report["lost_up"] == 0
    assert report["duplicates"] == report["out_of_order"] == 0
    assert report["steady"] is True
    assert report["bridge_exit"] == 0
    assert report["published"] >= 350  # 4 s at 100/s, give or take the scheduler
    # The outage really happened while messages flowed: each subscriber missed some.
    assert report["outage"]["back"] > report["outage"]["action"]
    for name, counts in report["subscribers"].items():
        # RabbitMQ stayed up: what was missed was missed while the bridge reconnected.
        assert counts["lost_down"] == 0, name
        assert counts["lost_reconnecting"] > 0, name
        assert counts["delivered"] + counts["lost_reconnecting"] == report["published"], name
    # Each was told, with one #gap frame.
    assert report["told_of_gap"] == len(report["subscribers"])


async def test_chaos_short_mode_with_history_loses_nothing_at_all() -> None:
    """The same outage on a topic with history: the bridge continues the stream where it
    stopped, so what was published while it reconnected reaches every subscriber too."""
    report = await run_chaos("--history")
    assert report["ok"] is True
    assert report["history"] is True
    assert report["outage"]["back"] > report["outage"]["action"]
    assert report["duplicates"] == report["out_of_order"] == 0
    assert report["told_of_gap"] == 0
    for name, counts in report["subscribers"].items():
        assert counts["lost_down"] == counts["lost_reconnecting"] == counts["lost_up"] == 0
        assert counts["delivered"] == report["published"], name
