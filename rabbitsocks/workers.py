"""``rabbitsocks serve --workers N``: N server processes sharing the listeners' ports.

The parent is a small supervisor, not a server: it starts N children running ``serve`` on
the same configuration, each binding the listening ports with SO_REUSEPORT so that the
kernel spreads new connections across them. Each child has its own event loop, its own
AMQP connection and its own queue, exactly like separate machines would: RabbitMQ routes
to every process whose clients joined a topic, so deliveries scale with cores.

A Socket.IO session polling over HTTP makes many requests, which the kernel spreads over the
workers like any connection: each worker passes a request of another's session to its owner
(``transports.affinity``), over Unix sockets in a private directory the supervisor makes
for the run (``--run-dir``) and removes at the end.

SIGTERM or SIGINT to the parent is passed on to every child, which shuts down gracefully;
the parent exits 0 once all of them did. A child that dies on its own is a fault: the
parent stops the others and exits 1, leaving restarts to the service manager.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import FrameType

from rabbitsocks.config import Config
from rabbitsocks.errors import ConfigError

__all__ = ["check_workers", "supervise"]

logger = logging.getLogger("rabbitsocks.workers")


def check_workers(config: Config, workers: int) -> None:
    """Refuse configurations that several processes cannot share."""
    for listener in config.listeners:
        if listener.interface.port == 0:
            raise ConfigError(
                config.source,
                f"{listener.key}.interface",
                "--workers needs a fixed port (port 0 would give each worker another one)",
            )
    if config.effective_default_broker == "memory":
        logger.warning(
            "with --workers %d, the memory broker is per process: a message published to"
            " one worker reaches only that worker's clients; use RabbitMQ"
            " (RABBITSOCKS_AMQP_URL) to reach them all",
            workers,
        )


def supervise(workers: int, child_args: Sequence[str], grace: float) -> int:
    """Run ``workers`` children with ``child_args`` until a signal; the exit status."""
    # Each child's stdin is a pipe from us: if we die without a word (SIGKILL), the pipe
    # closes and the children shut down instead of serving on as orphans.
    run_dir = tempfile.mkdtemp(prefix="rabbitsocks-")  # mode 0700: the workers' sockets
    command = [sys.executable, "-m", "rabbitsocks", "serve", *child_args, "--run-dir", run_dir]
    children = [
        subprocess.Popen([*command, "--worker", f"{i}/{workers}"], stdin=subprocess.PIPE)
        for i in range(workers)
    ]
    logger.info("started %d workers: pids %s", workers, " ".join(str(c.pid) for c in children))
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        while any(child.poll() is None for child in children):
            for child in children:
                code = child.poll()
                if code is not None and not stopping:
                    logger.error("worker pid %d exited with status %d; stopping", child.pid, code)
                    status = 1
                    forward(signal.SIGTERM, None)
            time.sleep(0.2)  # a supervisor's poll: nothing here is latency-sensitive
        deadline = time.monotonic() + grace
        for child in children:
            code = child.wait(timeout=max(0.1, deadline - time.monotonic()))
            if code != 0:
                status = 1
    except subprocess.TimeoutExpired:
        for child in children:
            child.kill()
        status = 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(run_dir, ignore_errors=True)
    return status
