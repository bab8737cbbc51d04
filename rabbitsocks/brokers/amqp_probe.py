"""The end-to-end probe of ``AmqpBroker``: liveness that means delivery.

A connection that looks healthy is not proof that messages arrive: a frozen RabbitMQ node
keeps its TCP connections open (heartbeats notice it only after about three intervals),
and a node partitioned from the rest of its cluster happily declares our queue and binds
it while publishers on the other nodes cannot reach it. So every ``interval`` seconds the
probe sends a message to the session's own queue through the default exchange (no binding
needed; nothing but our queue can receive it) and expects it back within ``timeout``:

* **local**, on the session's own publish channel: a frozen or broken node fails it;
* **remote**, when the broker has several URLs, on a small connection of its own to another
  node, with ``mandatory`` set: that node must know our queue and reach it, as a
  publisher's message must. A return (``NO_ROUTE``: that node does not see our queue, the
  signature of a partition) or a confirmed message that never arrives fails the probe;
  a remote node that does not answer is *its* problem, not ours: the probe moves its
  connection to the next node and says nothing.

A failed probe calls ``on_failure(session, reason)`` (the broker then leaves the node); a
passing one ``on_success(session)``. Latencies and failures are counted in ``ProbeStats``
for the metrics endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aio_pika
import aio_pika.abc
import aiormq

if TYPE_CHECKING:
    from rabbitsocks.brokers.amqp import AmqpBroker
    from rabbitsocks.brokers.amqp_session import Session

__all__ = ["Probe"]

log = logging.getLogger(__name__)

_counter = itertools.count()


class _Verdict(Exception):
    """The probe failed: the session's node does not deliver (the message says why)."""


class Probe:
    """Probes one session until stopped (see the module docstring)."""

    def __init__(
        self,
        broker: AmqpBroker,
        session: Session,
        *,
        interval: float,
        timeout: float,
        on_failure: Callable[[Session, str], None] | None = None,
        on_success: Callable[[Session], None] | None = None,
    ) -> None:
        self._broker = broker
        self._session = session
        self._interval = interval
        self._timeout = timeout
        self._on_failure = on_failure
        self._on_success = on_success
        self._task: asyncio.Task[None] | None = None
        self._remote: aio_pika.abc.AbstractConnection | None = None
        self._remote_channel: Any = None
        self._remote_url = ""
        self._remote_order = broker.other_urls(session)
        self._remote_next = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"rabbitsocks probe {self._broker.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_remote()

    async def once(self) -> str | None:
        """One probe round (local and remote); the reason it failed, or ``None``."""
        try:
            await self._round()
        except _Verdict as exc:
            return str(exc)
        finally:
            await self._close_remote()
        return None

    async def _run(self) -> None:
        session = self._session
        while not session.lost.is_set():
            started = time.monotonic()
            try:
                await self._round()
            except _Verdict as exc:
                self._broker.probes.failed += 1
                if self._on_failure is not None and not session.lost.is_set():
                    self._on_failure(session, str(exc))
                return
            if self._on_success is not None:
                self._on_success(session)
            pause = self._interval - (time.monotonic() - started)
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await session.lost.wait()

    async def _round(self) -> None:
        local = asyncio.ensure_future(self._local())
        remote = asyncio.ensure_future(self._remote_probe())
        try:
            await asyncio.gather(local, remote)
        finally:
            for task in (local, remote):
                if not task.done():
                    task.cancel()
            await asyncio.gather(local, remote, return_exceptions=True)

    def _expect(self) -> tuple[bytes, asyncio.Future[None]]:
        body = f"rabbitsocks-probe {os.getpid()} {next(_counter)}".encode()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._session.probe_waiters[body] = waiter
        return body, waiter

    async def _local(self) -> None:
        session = self._session
        body, waiter = self._expect()
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                channel = await self._broker.publish_channel(session)
                await channel.basic_publish(body, exchange="", routing_key=session.queue)
                await waiter
        except TimeoutError:
            raise _Verdict(f"the probe did not come back within {self._timeout:g}s") from None
        except asyncio.CancelledError:
            if session.lost.is_set():
                raise _Verdict("the connection was lost during the probe") from None
            raise
        except aiormq.exceptions.DeliveryError:
            raise _Verdict("RabbitMQ nacked the probe") from None
        except Exception as exc:
            raise _Verdict(f"the probe failed: {type(exc).__name__}: {exc}") from None
        finally:
            session.probe_waiters.pop(body, None)
        self._broker.probes.observe(time.monotonic() - started)

    async def _remote_probe(self) -> None:
        """Through another node: ``_Verdict`` only when that node answers and cannot reach
        our queue; otherwise (no other node answers) the local probe decides alone."""
        for _ in range(len(self._remote_order)):
            channel = await self._remote_connect()
            if channel is None:
                return
            session = self._session
            body, waiter = self._expect()
            confirmed = False
            try:
                async with asyncio.timeout(self._timeout):
                    try:
                        await channel.basic_publish(
                            body, exchange="", routing_key=session.queue, mandatory=True
                        )
                    except aiormq.exceptions.PublishError:
                        raise _Verdict(
                            f"{self._remote_url} cannot route to our queue (returned "
                            "unroutable): this node is cut off from the cluster"
                        ) from None
                    confirmed = True
                    await waiter
                return
            except _Verdict:
                raise
            except TimeoutError:
                if confirmed:
                    raise _Verdict(
                        f"a probe confirmed by {self._remote_url} did not arrive within "
                        f"{self._timeout:g}s: this node is cut off from the cluster"
                    ) from None
                reason = f"no confirm within {self._timeout:g}s"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                session.probe_waiters.pop(body, None)
            log.debug("probe via %s failed (%s): trying another node", self._remote_url, reason)
            await self._close_remote()

    async def _remote_connect(self) -> Any:
        """The remote probe channel, connecting to the next other node that answers."""
        if self._remote_channel is not None and not self._remote_channel.is_closed:
            return self._remote_channel
        await self._close_remote()
        for _ in range(len(self._remote_order)):
            url, safe = self._remote_order[self._remote_next % len(self._remote_order)]
            self._remote_next += 1
            try:
                async with asyncio.timeout(self._broker.connect_timeout):
                    connection = await aio_pika.connect(
                        url,
                        ssl_context=self._broker.ssl_context_for(url),
                        client_properties={
                            "connection_name": f"rabbitsocks {self._broker.name} probe "
                            f"pid {os.getpid()}"
                        },
                    )
                    channel = connection.channel(publisher_confirms=True, on_return_raises=True)
                    await channel.initialize()
                    raw = await channel.get_underlay_channel()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("probe: cannot connect to %s: %s", safe, exc)
                continue
            self._remote, self._remote_channel, self._remote_url = connection, raw, safe
            return raw
        return None

    async def _close_remote(self) -> None:
        remote, self._remote, self._remote_channel = self._remote, None, None
        if remote is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._broker.connect_timeout):
                    await remote.close()
