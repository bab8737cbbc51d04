"""Private RabbitMQ nodes for the tests that stop, freeze or partition RabbitMQ.

Those tests never touch the shared broker on 5672: each starts nodes of its own, named
``rs-cluster-<pid>-<n>@localhost`` (the test process's id: two runs of the suite on one
machine, from two clones, never share a node), on ports the kernel finds free when the
node is made (AMQP, AMQPS, Erlang distribution), each with its own data and log
directories under a temporary directory, and a cookie of their own in a ``HOME`` of their
own. The CLI tools (``rabbitmqctl``) run with the same ``HOME`` and with their
distribution ports in 25740-25799.

``PrivateNode.start`` runs ``rabbitmq-server`` in the foreground as a child of the test
process (so ``kill`` and ``SIGSTOP`` reach it by its process id) and waits until the node
answers ``await_startup``. ``PrivateCluster`` starts three and joins the second and third
to the first (``join_cluster``). Starting a node takes a few seconds: the fixtures in
tests/integration/conftest.py are session-scoped, and tests that break a node restore it.

Partitions: ``PrivateCluster.partition(node)`` makes ``node`` disconnect from all the
others at once (``erlang:disconnect_node/1`` through ``rabbitmqctl eval``) and waits until
RabbitMQ reports the partition (``cluster_status``). With ``ignore`` partition handling
(set by ``write_files``) the two sides then run apart, as after a real network split, and
``heal`` restarts the minority side's nodes to merge them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PrivateCluster",
    "PrivateNode",
    "TlsFiles",
    "free_port",
    "make_tls_files",
    "rabbitmq_available",
]

CTL_DIST_PORTS = (25740, 25799)
NAME_PREFIX = f"rs-cluster-{os.getpid()}"
_handed_out: set[int] = set()


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (nothing listens there now), and not
    one this process was given before (a private node's or a test's): two calls in a row
    could otherwise get the same port from the kernel, as nothing holds it between them."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


_SBIN = Path("/usr/lib/rabbitmq/bin")
#: Seconds a node may take to start (a cold start here is 3 to 6 s).
START_TIMEOUT = 90.0


def _tool(name: str) -> str:
    """The real script (the Debian wrappers in /usr/sbin switch to the rabbitmq user)."""
    path = _SBIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: the private-node tests need RabbitMQ")
    return found


def rabbitmq_available() -> bool:
    return (_SBIN / "rabbitmq-server").exists() or shutil.which("rabbitmq-server") is not None


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class TlsFiles:
    """A self-signed CA and a server certificate it signed (PEM files), made by the test."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path, server_names: tuple[str, ...] = ("localhost",)) -> TlsFiles:
    """A CA, a server certificate for ``server_names`` (and 127.0.0.1), a client certificate."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("rabbitsocks test CA"))
        .issuer_name(name("rabbitsocks test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def issue(common: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    server_key, server_cert = issue(server_names[0], ExtendedKeyUsageOID.SERVER_AUTH, sans)
    client_key, client_cert = issue("rabbitsocks", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        ca=directory / "ca.pem",
        cert=directory / "server.pem",
        key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    write_key(server_key, files.key)
    files.client_cert.write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
    write_key(client_key, files.client_key)
    for path in (files.key, files.client_key):
        path.chmod(0o600)
    return files


@dataclass
class PrivateNode:
    """One private RabbitMQ node (see the module docstring)."""

    index: int
    base: Path
    cookie: str
    amqp_port: int
    dist_port: int
    amqps_port: int | None = None
    tls: TlsFiles | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{NAME_PREFIX}-{self.index}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def tls_url(self) -> str:
        assert self.amqps_port is not None
        return f"amqps://guest:guest@localhost:{self.amqps_port}/"

    @property
    def home(self) -> Path:
        return self.base / "home"

    #: The process id of the node's Erlang VM (``beam.smp``), as the node says.
    beam_pid: int | None = None

    @property
    def pid(self) -> int:
        """The process id of the node's Erlang VM, to signal it."""
        assert self.beam_pid is not None, f"{self.name} is not running"
        return self.beam_pid

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.home),
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            # Not /etc/rabbitmq/rabbitmq-env.conf, which names the shared node.
            RABBITMQ_CONF_ENV_FILE=str(self.base / "rabbitmq-env.conf"),
            RABBITMQ_CTL_DIST_PORT_MIN=str(CTL_DIST_PORTS[0]),
            RABBITMQ_CTL_DIST_PORT_MAX=str(CTL_DIST_PORTS[1]),
            ERL_EPMD_ADDRESS="127.0.0.1",
            ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}",
            # The script then execs the VM instead of running it as a child behind signal
            # traps: our SIGSTOP and SIGKILL must reach the VM itself.
            RUNNING_UNDER_SYSTEMD="true",
        )
        return env

    def write_files(self) -> None:
        for sub in ("home", "mnesia", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(self.cookie)
        cookie.chmod(0o600)
        lines = [
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}",
            "loopback_users = none",
            # Ours must never be mistaken for the shared node in a log.
            "log.file.level = info",
            # Let the tests see a partition as one (the default, said aloud).
            "cluster_partition_handling = ignore",
            # Nodes notice a frozen peer within 7.5 to 12.5 s rather than 45 to 75 s (the
            # default 60); until then, declaring a queue waits on the frozen node.
            "net_ticktime = 10",
        ]
        if self.tls is not None and self.amqps_port is not None:
            lines += [
                f"listeners.ssl.default = 127.0.0.1:{self.amqps_port}",
                f"ssl_options.cacertfile = {self.tls.ca}",
                f"ssl_options.certfile = {self.tls.cert}",
                f"ssl_options.keyfile = {self.tls.key}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        (self.base / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the node (its VM a child of this process) and wait until it is up."""
        self.write_files()
        for port in (self.amqp_port, self.dist_port, self.amqps_port):
            if port is not None and not _free(port):
                raise RuntimeError(
                    f"port {port} for private RabbitMQ node {self.name} is in use: a node of "
                    f"an earlier run? `HOME={self.home} rabbitmqctl -n {self.name} stop`"
                )
        log = (self.base / "log" / "console.log").open("ab")
        # exec: the Popen's pid is the Erlang VM's own, so signals reach the node itself.
        self.process = subprocess.Popen(
            ["/bin/sh", "-c", f'exec "{_tool("rabbitmq-server")}"'],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.await_startup()
        out = self.ctl("eval", "os:getpid().").stdout.strip().strip('"')
        self.beam_pid = int(out)

    def await_startup(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"private RabbitMQ node {self.name} exited ({self.process.returncode}); "
                    f"see {self.base / 'log'}"
                )
            result = self.ctl("await_startup", "--timeout", "10", check=False)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start: {result.stderr.strip()[-500:]}")
            time.sleep(0.3)  # the node is not registered with epmd yet: poll

    def ctl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [_tool("rabbitmqctl"), "-n", self.name, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl -n {self.name} {' '.join(args)}: "
                f"{(result.stderr or result.stdout).strip()[-800:]}"
            )
        return result

    async def actl(self, *args: str, check: bool = True) -> str:
        result = await asyncio.to_thread(self.ctl, *args, check=check)
        return result.stdout

    def stop(self) -> None:
        """Stop the node (``rabbitmqctl stop``, then kill if it does not go) and wait."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(OSError, AssertionError):
            os.kill(self.pid, signal.SIGCONT)  # a frozen node cannot stop itself
        if process.poll() is None:
            self.ctl("stop", check=False, timeout=30)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            process.wait(timeout=10)
        self.process = self.beam_pid = None

    def kill(self) -> None:
        """``kill -9`` the node's VM, as a crash would."""
        process = self.process
        if process is not None:
            os.kill(self.pid, signal.SIGKILL)
            process.wait(timeout=10)
            self.process = self.beam_pid = None

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.await_startup()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- what tests ask the node ---------------------------------------------------------------

    def bindings(self, queue: str, exchange: str = "amq.topic") -> list[str]:
        """Binding keys from ``exchange`` to ``queue``, sorted (duplicates kept)."""
        out = self.ctl(
            "-q",
            "list_bindings",
            "source_name",
            "destination_name",
            "routing_key",
            "--formatter",
            "json",
        ).stdout
        rows = json.loads(out or "[]")
        return sorted(
            r["routing_key"]
            for r in rows
            if r["source_name"] == exchange and r["destination_name"] == queue
        )

    def queues(self) -> list[str]:
        out = self.ctl("-q", "list_queues", "name", "--formatter", "json").stdout
        return [r["name"] for r in json.loads(out or "[]")]

    def partitions(self) -> list[str]:
        """The nodes this node sees itself partitioned from."""
        out = self.ctl("-q", "cluster_status", "--formatter", "json").stdout
        status = json.loads(out)
        found: list[str] = []
        for entry in status.get("partitions", {}).values():
            found += entry
        return found


@dataclass
class PrivateCluster:
    """Private nodes ``<NAME_PREFIX>-<first>`` .. ``-<first + size - 1>``, clustered by
    ``start``."""

    nodes: list[PrivateNode]
    root: Path

    @classmethod
    def create(
        cls,
        size: int = 3,
        *,
        first: int = 1,
        tls: bool = False,
        root: Path | None = None,
    ) -> PrivateCluster:
        base = root or Path(tempfile.mkdtemp(prefix="rs-cluster-"))
        cookie = secrets.token_hex(16).upper()
        files = make_tls_files(base / "tls") if tls else None
        nodes = [
            PrivateNode(
                index=first + i,
                base=base / f"node{first + i}",
                cookie=cookie,
                amqp_port=free_port(),
                dist_port=free_port(),
                amqps_port=free_port() if tls else None,
                tls=files,
            )
            for i in range(size)
        ]
        return cls(nodes, base)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> None:
        """Start every node, then join the others to the first one."""
        started: list[PrivateNode] = []
        try:
            for node in self.nodes:
                node.start()
                started.append(node)
            head = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", head.name)
                node.ctl("start_app")
                node.await_startup()
        except BaseException:
            for node in started:
                node.stop()
            raise

    def stop(self) -> None:
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                node.stop()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def running_nodes(self, via: PrivateNode) -> list[str]:
        out = via.ctl("-q", "cluster_status", "--formatter", "json").stdout
        return list(json.loads(out).get("running_nodes", []))

    def restart(self, node: PrivateNode) -> None:
        """Start a node that was stopped or killed again; it rejoins its cluster."""
        if node.running:
            node.stop()
        node.start()

    def partition(self, node: PrivateNode, timeout: float = 60.0) -> None:
        """Cut ``node`` off from the other nodes until RabbitMQ reports a partition."""
        others = [n for n in self.nodes if n is not node and n.running]
        # All at once: a node that still sees ``node`` while another does not makes
        # RabbitMQ disconnect the majority from each other too ("partial partition").
        cut = " ".join(f"erlang:disconnect_node('{other.name}')," for other in others)
        node.ctl("eval", f"{cut} ok.")
        deadline = time.monotonic() + timeout
        while not all(other.name in node.partitions() for other in others):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name}: no partition reported after {timeout:g}s")
            time.sleep(0.2)  # RabbitMQ sends no event a test can wait on: poll

    def partitioned(self) -> dict[str, set[str]]:
        """Running node name -> the nodes it reports itself partitioned from."""
        return {n.name: set(n.partitions()) for n in self.nodes if n.running}

    def heal(self, timeout: float = 120.0) -> None:
        """Merge partitions back, RabbitMQ's documented way: restart the nodes of the
        minority side (the node that reports the most peers it is partitioned from), one
        at a time, until no node reports a partition."""
        deadline = time.monotonic() + timeout
        while True:
            views = self.partitioned()
            if not any(views.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the partition did not heal: {views}")
            worst = max(self.nodes, key=lambda n: len(views.get(n.name, ())))
            worst.stop()
            worst.start()
            settle = time.monotonic() + 20
            while any(self.partitioned().values()) and time.monotonic() < settle:
                time.sleep(0.3)  # RabbitMQ sends no event a test can wait on: poll
