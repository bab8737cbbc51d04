"""callbacks.stomp attacked as an adversary would (issue 11's red team, second round): each
test failed on the code before its fix. Real server on port 0, the test STOMP client of
``tests/support/stomp.py``.
"""

from __future__ import annotations

import pytest

from tests.functional.test_stomp import stomp_server
from tests.support.stomp import StompClient


@pytest.mark.parametrize("send", [["/topic/#"], []], ids=["send allowed", "send refused"])
async def test_transactions_hold_at_most_max_frame_size(send: list[str]) -> None:
    # A transaction held up to 1,000 frames, and a connection 16 transactions: 16,000
    # SENDs of up to max_frame_size each (16 GB at the default 1 MiB), held before SEND was
    # even authorized: with SEND off (the default), one client took the server from 48
    # to 341 MB in 2 s.
    async with stomp_server({"send": send, "max_frame_size": 64 * 1024}) as url:
        client = await StompClient.connect(url)
        await client.request("BEGIN", {"transaction": "t"})
        body = b"x" * (40 * 1024)
        for _ in range(2):  # each within max_frame_size, together beyond it
            await client.send_frame("SEND", {"destination": "/topic/a", "transaction": "t"}, body)
        error = await client.next()
        assert (error.command, error.headers["message"]) == ("ERROR", "Transaction too large")
