"""The RPC messages, generated from ``proto/websockets.proto`` by ``scripts/gen-proto``.

Do not edit ``websockets_pb2.py`` or ``.pyi`` by hand; regenerate them (see
``proto/README.md``).
"""

from rabbitsocks.rpc.pb.websockets_pb2 import Message, Request, Response

__all__ = ["Message", "Request", "Response"]
