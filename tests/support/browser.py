"""Headless Chromium for tests/e2e: what must be installed, and a line protocol with a
Node.js script that drives it (playwright-core from demo/node_modules).

The tests fail, never skip, when something is missing: a skipped browser test looks
green. ``RABBITSOCKS_CHROMIUM`` points them at another Chromium.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from rabbitsocks.demo import ASSETS

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("RABBITSOCKS_CHROMIUM", "/usr/bin/chromium")

#: Answers a request line of the script (a JSON object) with a JSON object, or None.
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


def node_for_chromium() -> str:
    """The ``node`` that runs a browser script; fails with the fix when something is
    missing (Node.js, Chromium, playwright-core, the built demo page)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "Node.js is not installed: the browser tests drive Chromium from Node.js 20 or"
            " newer (Debian/Ubuntu: apt-get install -y nodejs npm), then run scripts/build-demo."
        )
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: install Debian's build with"
            " `apt-get install -y chromium` (as root), or point RABBITSOCKS_CHROMIUM at one."
        )
    if not (ROOT / "demo" / "node_modules" / "playwright-core").is_dir():
        pytest.fail(
            "playwright-core is not installed in demo/node_modules: run scripts/build-demo"
            " (it runs npm ci in demo/)."
        )
    for name in ("index.html", "socket.io.min.js"):
        if not (ASSETS / name).is_file():
            pytest.fail(
                f"{ASSETS / name} is missing: the demo page is not built: run scripts/build-demo."
            )
    return node


async def run_browser_script(
    script: Path, environ: Mapping[str, str], handle: Handler, deadline: float
) -> dict[str, Any]:
    """Run ``node script`` with Chromium at hand: every stdout line is a JSON request,
    answered on stdin by ``handle``, until the script's ``{"done": ...}`` line, whose value
    is returned. The script must exit 0; its stderr is the diagnostic of a failure."""
    return await run_node_script(node_for_chromium(), script, environ, handle, deadline)


def node_with_packages(*packages: str) -> str:
    """The ``node`` for a script that needs only npm ``packages`` from demo/node_modules."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not installed (Debian/Ubuntu: apt-get install -y nodejs npm).")
    for package in packages:
        if not (ROOT / "demo" / "node_modules" / package).is_dir():
            pytest.fail(f"{package} is not installed in demo/node_modules: run scripts/build-demo.")
    return node


async def run_node_script(
    node: str, script: Path, environ: Mapping[str, str], handle: Handler, deadline: float
) -> dict[str, Any]:
    """``run_browser_script`` with the ``node`` given (see ``node_with_packages``)."""
    ARTIFACTS.mkdir(exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        node,
        str(script),
        env={**os.environ, "CHROMIUM": CHROMIUM, "ARTIFACTS": str(ARTIFACTS), **environ},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    stderr = asyncio.ensure_future(process.stderr.read())
    done: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(deadline):
            async for line in process.stdout:
                request = json.loads(line)
                if "done" in request:
                    done = request["done"]
                    continue
                answer = await handle(request)
                if answer is not None:
                    process.stdin.write(json.dumps(answer).encode() + b"\n")
                    await process.stdin.drain()
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(
            f"{script.name} did not finish within {deadline:.0f} s:\n"
            + (await stderr).decode(errors="replace")
        )
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    log = (await stderr).decode(errors="replace")
    assert process.returncode == 0, f"{script.name} failed:\n{log}"
    assert done is not None, f"{script.name} ended without saying done:\n{log}"
    return done
