"""Transport adapters: bare WebSocket and Socket.IO, on aiohttp.

Only this package imports aiohttp's WebSocket types and python-socketio. Each adapter turns
its transport's events into calls on a transport-agnostic ``Connection``.
"""
