"""Protocol cores with no I/O: bytes in, events and bytes out (the websockets/h11 way).

``http1`` reads the head of the request that opens a connection; ``websocket`` is RFC 6455
framing and the closing handshake; ``engineio`` and ``socketio`` are the Engine.IO v4 and
Socket.IO v5 packet codecs. None of them imports asyncio's networking, aiohttp or a
broker client: the transports drive them, and the unit tests feed them bytes.
"""
