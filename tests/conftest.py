"""Fixtures shared by every tier of tests."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rabbitsocks import Listener, start_listener

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
async def echo_listener() -> AsyncIterator[Listener]:
    listener = await start_listener("127.0.0.1:0", "callbacks.echo")
    try:
        yield listener
    finally:
        await listener.stop()
