"""The pure pub/sub core: the RoadRunner command protocol and the topic hub.

Nothing in this package imports aiohttp or aio-pika, or does I/O: transports hand it text
frames and get text frames back, and brokers are driven through ``rabbitsocks.brokers.base``.
"""
