"""A private RabbitMQ node for the benchmark, with a high open-files limit.

RabbitMQ takes its open-files limit from the shell that started it: a node started under
``ulimit -n 1024`` accepts about 830 sockets, so Web-STOMP cannot hold N = 1,000
subscribers. Rather than restart a shared node, ``--private-broker`` starts a second node
next to it, from the same installation, with its own name, ports, data and logs under
``/tmp/rabbitsocks-bench-rmq``, and the open-files limit of this process (raised to its
hard limit). Every target then runs against it, so the comparison stays fair. It is
stopped (SIGTERM to its pid) at the end, unless it was already running when the
benchmark started, in which case it is reused and left running.

    node rsbench@localhost: AMQP 5673, management 15673, Web-STOMP 15675, STOMP 61614
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench.procstat import exists
from bench.targets import rabbitmq_node

__all__ = ["PrivateBroker"]

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
HOME = Path("/tmp/rabbitsocks-bench-rmq")
NODE = "rsbench@localhost"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5673/"
STOMP_URL = "ws://127.0.0.1:15675/ws"
MANAGEMENT_URL = "http://guest:guest@127.0.0.1:15673/"

_CONFIG = """\
listeners.tcp.default = 127.0.0.1:5673
management.tcp.ip = 127.0.0.1
management.tcp.port = 15673
web_stomp.tcp.ip = 127.0.0.1
web_stomp.tcp.port = 15675
stomp.listeners.tcp.1 = 127.0.0.1:61614
"""


class PrivateBroker:
    def __init__(self) -> None:
        self.pid: int | None = None
        self.started = False

    def _running(self) -> bool:
        try:
            node = rabbitmq_node(MANAGEMENT_URL)
        except OSError:
            return False
        return node.get("name") == NODE and bool(node.get("os_pid"))

    def _launch(self) -> None:
        """Write the node's files and start it in a session of its own."""
        if not SERVER.exists():
            raise RuntimeError(f"{SERVER} not found: is RabbitMQ installed here?")
        shutil.rmtree(HOME, ignore_errors=True)
        HOME.mkdir(parents=True)
        (HOME / "rabbitmq.conf").write_text(_CONFIG)
        (HOME / "enabled_plugins").write_text("[rabbitmq_management,rabbitmq_web_stomp].\n")
        (HOME / "rabbitmq-env.conf").write_text("")  # not the shared node's env file
        env = {
            **os.environ,
            "HOME": str(HOME),
            "RABBITMQ_CONF_ENV_FILE": str(HOME / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": NODE,
            "RABBITMQ_DIST_PORT": "25679",
            "RABBITMQ_CONFIG_FILE": str(HOME / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(HOME / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(HOME / "mnesia"),
            "RABBITMQ_LOG_BASE": str(HOME / "log"),
            "RABBITMQ_PID_FILE": str(HOME / "pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        with open(HOME / "server.log", "wb") as out:
            subprocess.Popen(
                [str(SERVER)],
                cwd=HOME,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not killed by a ^C meant for the benchmark
            )

    async def start(self, timeout: float = 90.0, settle: float = 15.0) -> None:
        if self._running():
            self.pid = int(rabbitmq_node(MANAGEMENT_URL)["os_pid"])
            return
        self._launch()
        self.started = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._running():
                self.pid = int(rabbitmq_node(MANAGEMENT_URL)["os_pid"])
                # A node that just booted frees memory for a while; RSS per connection
                # measured meanwhile would come out low, even negative.
                await asyncio.sleep(settle)
                return
            await asyncio.sleep(1.0)
        await self.stop()
        raise RuntimeError(f"the private RabbitMQ node did not start; see {HOME}/server.log")

    async def stop(self) -> None:
        if not self.started:
            return
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(300):  # bounded: 30 s
            if not exists(pid):
                return
            await asyncio.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
