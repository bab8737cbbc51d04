"""TLS listeners (issue 5, point 9): ``tls: {cert, key}`` in the configuration serves
``wss://`` and Socket.IO over ``https://``, tested with a self-signed certificate made here;
a certificate or key that cannot be loaded stops ``serve`` with one line and exit status 2.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rabbitsocks import Server
from rabbitsocks.config import parse_config
from tests.support.pubsub import run_cli, unique


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate only (and checks the host name)."""
        return ssl.create_default_context(cafile=str(self.cert))


def make_certificate(directory: Path, name: str = "server") -> Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rabbitsocks test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_path, key_path)


@pytest.fixture
def certificate(tmp_path: Path) -> Certificate:
    return make_certificate(tmp_path)


@pytest.fixture
async def tls_server(certificate: Certificate) -> AsyncIterator[Server]:
    raw = {
        "listeners": [
            {
                "interface": "127.0.0.1:0",
                "callback": "callbacks.pubsub",
                "tls": {"cert": str(certificate.cert), "key": str(certificate.key)},
            }
        ]
    }
    server = Server(parse_config(raw, source="tls.yaml"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_wss_and_socketio_over_https(tls_server: Server, certificate: Certificate) -> None:
    listener = tls_server.listeners[0]
    port = listener.port
    assert listener.urls == [f"wss://127.0.0.1:{port}/websocket/"]
    context = certificate.client_context()
    t = unique()
    memory = tls_server.services.brokers["memory"]

    async with websockets.connect(listener.urls[0], ssl=context) as ws:
        await ws.send(json.dumps({"command": "join", "topics": [t]}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {
            "topic": "@join",
            "payload": [t],
        }
        assert ws.transport.get_extra_info("ssl_object") is not None

        connector = aiohttp.TCPConnector(ssl=context)
        async with aiohttp.ClientSession(connector=connector) as session:
            for transports in (["polling"], ["websocket"]):
                client = socketio.AsyncClient(reconnection=False, http_session=session)
                messages: asyncio.Queue[Any] = asyncio.Queue()
                client.on("message", messages.put_nowait)
                await client.connect(
                    f"https://127.0.0.1:{port}", transports=transports, wait_timeout=5
                )
                try:
                    await client.send({"command": "join", "topics": [t]})
                    answer = await asyncio.wait_for(messages.get(), 5)
                    assert json.loads(answer) == {"topic": "@join", "payload": [t]}
                    await memory.publish(t, b"over TLS")
                    message = await asyncio.wait_for(messages.get(), 5)
                    assert json.loads(message) == {"topic": t, "payload": "over TLS"}
                    assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {
                        "topic": t,
                        "payload": "over TLS",
                    }
                finally:
                    await client.disconnect()


async def test_a_client_that_does_not_trust_the_certificate_is_refused(
    tls_server: Server,
) -> None:
    url = tls_server.listeners[0].urls[0]
    with pytest.raises(ssl.SSLCertVerificationError):
        await websockets.connect(url, ssl=ssl.create_default_context())


async def test_plain_http_on_a_tls_port_gets_nothing(tls_server: Server) -> None:
    port = tls_server.listeners[0].port
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://127.0.0.1:{port}/socket.io/?EIO=4") as response:
                await response.read()


def tls_config(path: Path, cert: Path, key: Path) -> Path:
    path.write_text(
        "listeners:\n"
        '  - interface: "127.0.0.1:0"\n'
        f"    tls: {{cert: {json.dumps(str(cert))}, key: {json.dumps(str(key))}}}\n"
    )
    return path


async def test_missing_certificate_is_one_line_and_exit_2(
    tmp_path: Path, certificate: Certificate
) -> None:
    missing = tmp_path / "nowhere.crt"
    config = tls_config(tmp_path / "tls.yaml", missing, certificate.key)
    code, out, err = await run_cli("serve", "-c", str(config))
    assert code == 2
    assert out == ""
    assert err == (
        f"rabbitsocks: {config}: listeners[0].tls: cannot load certificate {str(missing)!r}"
        f" and key {str(certificate.key)!r}: [Errno 2] No such file or directory\n"
    )


async def test_a_key_that_does_not_match_is_one_line_and_exit_2(
    tmp_path: Path, certificate: Certificate
) -> None:
    other = make_certificate(tmp_path, "other")
    config = tls_config(tmp_path / "tls.yaml", certificate.cert, other.key)
    code, out, err = await run_cli("serve", "-c", str(config))
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(
        f"rabbitsocks: {config}: listeners[0].tls: cannot load certificate"
        f" {str(certificate.cert)!r} and key {str(other.key)!r}: "
    )
    assert "KEY_VALUES_MISMATCH" in lines[0]


async def test_a_key_that_is_not_pem_is_one_line_and_exit_2(
    tmp_path: Path, certificate: Certificate
) -> None:
    junk = tmp_path / "junk.key"
    junk.write_text("not a key\n")
    config = tls_config(tmp_path / "tls.yaml", certificate.cert, junk)
    code, _, err = await run_cli("serve", "-c", str(config))
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"rabbitsocks: {config}: listeners[0].tls: cannot load certificate")


async def test_check_refuses_a_missing_certificate_like_serve(
    tmp_path: Path, certificate: Certificate
) -> None:
    missing = tmp_path / "nowhere.crt"
    config = tls_config(tmp_path / "tls.yaml", missing, certificate.key)
    code, _, err = await run_cli("check", "-c", str(config))
    assert code == 2
    assert err.startswith(f"rabbitsocks: {config}: listeners[0].tls: cannot load certificate")
