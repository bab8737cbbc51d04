"""What the STOMP sessions of one listener share: options, hubs, encoders, authorization.

A ``StompServer`` is made once per listener by ``callbacks.stomp.setup``. Sessions ask it
for the hub behind a destination, for a shared fan-out encoder, for the channel pool of
queue destinations, and whether a client may SUBSCRIBE or SEND somewhere.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rabbitsocks.auth import JoinAuthorizer
from rabbitsocks.callback import ConnectCheck
from rabbitsocks.connection import ConnectionInfo
from rabbitsocks.errors import BrokerError, UnknownBroker
from rabbitsocks.pubsub.hub import Hub
from rabbitsocks.services import Services
from rabbitsocks.stomp.destinations import Destination, DestinationRules
from rabbitsocks.stomp.frames import StompError
from rabbitsocks.stomp.heartbeat import VISIT
from rabbitsocks.stomp.messages import FanoutEncoder
from rabbitsocks.stomp.options import Options
from rabbitsocks.transports.heartbeat import Heartbeat

if TYPE_CHECKING:
    from rabbitsocks.brokers.amqp_channels import AmqpChannelPool

__all__ = ["StompServer"]

_EncoderKey = tuple[str, str, str | None, bool]


class StompServer:
    """The listener-wide part of the STOMP callback."""

    def __init__(
        self,
        options: Options,
        services: Services,
        *,
        connect_auth: ConnectCheck | None = None,
        subscribe_auth: JoinAuthorizer | None = None,
        send_auth: JoinAuthorizer | None = None,
    ) -> None:
        self.options = options
        self.services = services
        self.connect_auth = connect_auth
        self.subscribe_auth = subscribe_auth
        self.send_auth = send_auth
        self.subscribe_rules = DestinationRules(options.subscribe)
        self.send_rules = DestinationRules(options.send)
        self.ticker = Heartbeat(VISIT)
        # The default broker's hub, checked now so that a misconfigured broker name is a
        # start-up error, not a SUBSCRIBE-time one.
        self.hub = services.hub(options.broker)
        #: Whether queue and /exchange/ destinations can work (a RabbitMQ broker).
        self.rabbitmq = self.hub.broker.rabbitmq is not None
        self._encoders: weakref.WeakValueDictionary[_EncoderKey, FanoutEncoder] = (
            weakref.WeakValueDictionary()
        )

    # --- where messages come from -----------------------------------------------------------

    async def topic_hub(self) -> Hub:
        """The hub of /topic/: the broker's own when its exchange is the topic exchange
        (shared with pubsub listeners), else one for the topic exchange."""
        if not self.rabbitmq:
            return self.hub  # the memory broker: topics only
        return await self._exchange_hub(self.options.topic_exchange)

    async def exchange_hub(self, exchange: str) -> Hub:
        if not self.rabbitmq:
            raise self.needs_rabbitmq("/exchange/")
        return await self._exchange_hub(exchange)

    async def _exchange_hub(self, exchange: str) -> Hub:
        try:
            return await self.services.exchange_hub(self.options.broker, exchange)
        except (BrokerError, UnknownBroker) as exc:
            raise StompError("Broker unavailable", str(exc)) from None

    def channel_pool(self) -> AmqpChannelPool:
        if not self.rabbitmq:
            raise self.needs_rabbitmq("queue")
        return self.services.channel_pool(self.options.broker)

    def needs_rabbitmq(self, what: str) -> StompError:
        return StompError(
            "Destination not supported",
            f"{what} destinations need RabbitMQ, and this server's broker "
            f"{self.hub.broker.name!r} is not (only /topic/ works here)",
        )

    def encoder(
        self, version: str, subscription: str, exchange: str | None, ack: bool
    ) -> FanoutEncoder:
        """The fan-out encoder for this key, shared by every subscription that has it (the
        hub encodes a message once per encoder object)."""
        key = (version, subscription, exchange, ack)
        encoder = self._encoders.get(key)
        if encoder is None:
            encoder = FanoutEncoder(
                version, subscription, exchange, ack, self.options.topic_exchange
            )
            self._encoders[key] = encoder
        return encoder

    # --- authorization ----------------------------------------------------------------------

    async def authorize(
        self,
        command: str,
        dest: Destination,
        text: str,
        info: ConnectionInfo | None,
        claims: Mapping[str, Any] | None,
    ) -> None:
        """Raise ``StompError`` unless the configuration, the token's claim and the hook
        all let this client ``command`` (SUBSCRIBE or SEND) ``dest``."""
        options = self.options
        if command == "SEND":
            rules, claim, hook = self.send_rules, options.send_claim, self.send_auth
            if not rules and claim is None:
                raise StompError("Access refused", "SEND is not enabled on this server")
        else:
            rules, claim, hook = self.subscribe_rules, options.subscribe_claim, self.subscribe_auth
        allowed = rules.allows(dest)
        if not allowed and claim is not None:
            allowed = DestinationRules.from_claim((claims or {}).get(claim)).allows(dest)
        if not allowed:
            raise StompError("Access refused", f"{command} to '{text}' is not allowed")
        if hook is None:
            return
        if info is not None and claims is not None:
            info = dataclasses.replace(info, claims=claims)
        granted, denied = await hook.split([text], info)
        if not granted:
            reason = next(iter(denied), "not authorized")
            raise StompError("Access refused", f"{command} to '{text}': {reason}")

    def stop(self) -> None:
        self.ticker.stop()
