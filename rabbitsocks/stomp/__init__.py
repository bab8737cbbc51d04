"""STOMP over WebSocket, as RabbitMQ's Web-STOMP plugin speaks it.

``frames`` (the codec), ``destinations`` and ``messages`` (header mapping) are pure;
``session`` runs one connection and ``server`` what a listener's sessions share, on the
process's hubs and, for queues and SEND, on ``rabbitsocks.brokers.amqp_channels``. The
callback module is ``callbacks.stomp``; the protocol as served is in docs/stomp.md.
"""
