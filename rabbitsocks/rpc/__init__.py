"""RPC publishing: RoadRunner's broadcast Publish / PublishAsync over goridge TCP and HTTP.

This package exports the clients and the messages. The server side lives in its modules:
``service.PublishService`` (the semantics), ``goridge_server.start_goridge_server`` and
``http.make_rpc_app`` / ``http.add_rpc_routes`` (the transports).
"""

from rabbitsocks.rpc.client import GoridgeClient, HttpRpcClient, build_request
from rabbitsocks.rpc.pb import Message, Request, Response

__all__ = ["GoridgeClient", "HttpRpcClient", "Message", "Request", "Response", "build_request"]
