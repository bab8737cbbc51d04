"""A socket.io-client burst over polling (found by the red team): everything sent while a
POST is in flight goes in the next one, 199 packets for a burst of 200 sends; the server
must take it (engine.io-client bounds a POST by maxPayload only) and answer every one."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from rabbitsocks import start_listener

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
const { createRequire } = require("node:module");
const require2 = createRequire(process.env.DEMO + "/package.json");
const { io } = require2("socket.io-client");
const socket = io(process.env.URL, { transports: ["polling"], reconnection: false });
let echoed = 0;
const errors = [];
socket.on("disconnect", (reason) => {
  if (reason !== "io client disconnect") errors.push(reason);
});
socket.on("message", () => {
  if (++echoed === 200) { console.log(JSON.stringify({ echoed, errors })); process.exit(0); }
});
socket.on("connect", () => { for (let i = 0; i < 200; i++) socket.send(`m${i}`); });
setTimeout(() => { console.log(JSON.stringify({ echoed, errors })); process.exit(0); }, 15000);
"""


async def test_a_burst_of_sends_over_polling_is_taken_whole() -> None:
    # With the old default of 64 packets per payload the client was disconnected.
    listener = await start_listener("127.0.0.1:0", "callbacks.echo")
    try:
        proc = await asyncio.create_subprocess_exec(
            "node", "-e", SCRIPT,
            env={**os.environ, "URL": f"http://127.0.0.1:{listener.port}",
                 "DEMO": str(ROOT / "demo")},
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert json.loads(out) == {"echoed": 200, "errors": []}
    finally:
        await listener.stop()
