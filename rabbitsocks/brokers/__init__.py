"""Message brokers: the ``Broker`` protocol and its adapters (memory, RabbitMQ)."""

from rabbitsocks.brokers.base import Broker, DeliveryHandler, StateHandler

__all__ = ["Broker", "DeliveryHandler", "StateHandler"]
