"""The examples of docs/operations.md, against a real server: the Kubernetes probes ask
paths the admin endpoint answers, ``RABBITSOCKS_ADMIN`` moves it, and a connection logs the
two lines the page shows (without the query string, where tokens travel)."""

from __future__ import annotations

import logging
import re
from typing import Any

import aiohttp
import pytest
import yaml

from rabbitsocks.config import Interface, load_config
from tests.support.docs import ROOT, code_blocks
from tests.support.examples import default_server

DOC = "operations.md"
TEXT = (ROOT / "docs" / DOC).read_text(encoding="utf-8")


def probes() -> dict[str, Any]:
    (block,) = [b for b in code_blocks(DOC, "yaml") if "livenessProbe" in b]
    document = yaml.safe_load(block)
    assert set(document) == {"livenessProbe", "readinessProbe"}
    return dict(document)


def test_the_probes_ask_the_default_admin_port() -> None:
    admin = load_config(None, environ={}).admin
    assert admin == Interface("127.0.0.1", 8082)
    for probe in probes().values():
        assert probe["httpGet"]["port"] == admin.port


def test_the_pod_setting_of_the_admin_endpoint() -> None:
    (setting,) = re.findall(r"set `RABBITSOCKS_ADMIN=(\S+)` so the kubelet", TEXT)
    variable, value = "RABBITSOCKS_ADMIN", setting
    assert load_config(None, environ={variable: value}).admin == Interface("0.0.0.0", 8082)


async def test_the_probes_paths_answer_on_the_admin_endpoint() -> None:
    paths = {name: probe["httpGet"]["path"] for name, probe in probes().items()}
    assert paths == {"livenessProbe": "/health", "readinessProbe": "/ready"}
    async with default_server() as server, aiohttp.ClientSession() as http:
        assert server.admin_url is not None
        base = server.admin_url.rstrip("/")
        async with http.get(base + paths["livenessProbe"]) as health:
            assert health.status == 200
            assert (await health.json())["status"] == "ok"
        async with http.get(base + paths["readinessProbe"]) as ready:
            assert ready.status == 200
            assert (await ready.json())["ready"] is True


def log_lines() -> tuple[str, str]:
    (block,) = [b for b in code_blocks(DOC, "") if "rabbitsocks.connection" in b]
    opened, closed = block.splitlines()
    return opened, closed


def fields(line: str) -> tuple[list[str], dict[str, str]]:
    """``LEVEL logger: event id`` and the ``key=value`` pairs of a connection log line."""
    words = line.split()
    head = [w for w in words if "=" not in w]
    return head, dict(w.split("=", 1) for w in words if "=" in w)


async def test_a_connection_logs_the_two_lines_the_page_shows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rabbitsocks.connection")
    async with default_server() as server, aiohttp.ClientSession() as http:
        port, name = server.listeners[0].port, server.listeners[0].name
        ws = await http.ws_connect(f"http://127.0.0.1:{port}/websocket/chat?token=s3cret")
        await ws.close()  # 1000, answered by the server before close() returns
    # The server stopped: every connection's terminate ran and its close line is logged.
    logged = [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name == "rabbitsocks.connection"
    ]
    assert len(logged) == 2, logged
    assert not any("s3cret" in line for line in logged)  # no query string, no token
    for doc, got in zip(log_lines(), logged, strict=True):
        (doc_head, doc_fields), (head, values) = fields(doc), fields(got)
        assert head[:3] == doc_head[:3]  # INFO rabbitsocks.connection: open|close
        assert list(values) == list(doc_fields)  # the same keys, in the same order
        assert values["remote"] == "127.0.0.1"
        assert values["transport"] == doc_fields["transport"] == "websocket"
        assert values["path"] == doc_fields["path"] == "/chat"
        if "listener" in values:  # the listener's name: its configured interface
            assert values["listener"] == name
        if "duration" in values:
            assert re.fullmatch(r"\d+\.\d{3}s", values["duration"])
            assert values["code"] == doc_fields["code"] == "1000"
    assert fields(logged[0])[0][3] == fields(logged[1])[0][3]  # one connection id
