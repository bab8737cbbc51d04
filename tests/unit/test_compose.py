"""docker-compose.yml and the Dockerfile, checked without Docker (no engine runs here).

What ``docker compose up`` needs of us, read from the files themselves: the services and
their ports, RabbitMQ's healthcheck, environment variables that rabbitsocks really reads,
a container configuration that is valid with that environment and serves the ports the
compose file publishes, and a Dockerfile whose command, files and build context exist.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from rabbitsocks.config import ENVIRONMENT, Config, Interface, load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
EVERY_INTERFACE = {None, "0.0.0.0", "::"}


# --- reading the files -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def service(compose: Mapping[str, Any], name: str) -> dict[str, Any]:
    found = compose["services"][name]
    assert isinstance(found, dict)
    return found


_VARIABLE = re.compile(r"\$(?:\$|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(value: str, host: Mapping[str, str]) -> str:
    """Compose's variable substitution (``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR}``, ``$VAR``, ``$$``), with ``host`` as the shell's environment."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, default = match.group(2), match.group(3)
        if operator and operator.endswith("?"):
            raise AssertionError(f"{value!r} requires {name} from the shell")
        if operator == ":-":
            return host.get(name) or default
        if operator == "-":
            return host.get(name, default)
        return host.get(name, "")

    return _VARIABLE.sub(substitute, value)


def environment(svc: Mapping[str, Any], host: Mapping[str, str] | None = None) -> dict[str, str]:
    """A service's environment as its container sees it (list or mapping syntax)."""
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: interpolate(str(v), host or {}) for k, v in raw.items()}


@dataclasses.dataclass(frozen=True)
class Published:
    host_ip: str | None
    host_port: int
    container_port: int


def published(svc: Mapping[str, Any]) -> list[Published]:
    """A service's ``ports`` in the short syntax: ``[IP:]HOST:CONTAINER[/tcp]``."""
    ports = []
    for entry in svc.get("ports", []):
        assert isinstance(entry, str), f"quote port mappings ({entry!r}): YAML reads 1:1 as 61"
        text, _, protocol = entry.partition("/")
        assert protocol in ("", "tcp"), entry
        parts = text.rsplit(":", 2)
        assert len(parts) >= 2, f"{entry!r}: publish with an explicit host port"
        host_ip = parts[0] if len(parts) == 3 else None
        ports.append(Published(host_ip, int(parts[-2]), int(parts[-1])))
    return ports


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arguments for kw, arguments in self.instructions if kw == keyword]


def dockerfile_stages() -> list[Stage]:
    """The Dockerfile's build stages, each with its instructions (continuations joined)."""
    stages: list[Stage] = []
    logical = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, arguments))
    return stages


def copies(stage: Stage) -> Iterator[tuple[dict[str, str], list[str], str]]:
    """Each COPY of ``stage`` as (flags, sources, destination)."""
    for arguments in stage.all("COPY"):
        words = shlex.split(arguments)
        flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
        paths = [w for w in words if not w.startswith("--")]
        yield flags, paths[:-1], paths[-1]


def exec_form(arguments: str) -> list[str]:
    """CMD and ENTRYPOINT must be exec form (JSON), so that SIGTERM reaches rabbitsocks
    itself rather than a shell that does not pass it on."""
    parsed = yaml.safe_load(arguments)
    assert isinstance(parsed, list), f"use the exec form ([...]), not {arguments!r}"
    return [str(word) for word in parsed]


def dockerignored(path: str) -> bool:
    """Whether ``.dockerignore`` leaves ``path`` out of the build context: the last pattern
    matching the path or one of its parent directories decides (``!`` includes)."""
    excluded = False
    prefixes = [path[: i.start()] for i in re.finditer("/", path)] + [path]
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern)
        regex = regex.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


# --- the compose file --------------------------------------------------------------------


def test_services(compose: dict[str, Any]) -> None:
    # scripts/ensure-rabbitmq runs `docker compose up -d rabbitmq`: that name stays.
    assert set(compose["services"]) == {"rabbitmq", "rabbitsocks"}


def test_rabbitmq_has_the_management_ui_on_the_ports_the_tests_use(
    compose: dict[str, Any],
) -> None:
    rabbitmq = service(compose, "rabbitmq")
    assert re.fullmatch(r"rabbitmq:[\w.-]*management[\w.-]*", rabbitmq["image"])
    ports = {p.container_port: p for p in published(rabbitmq)}
    for port in (5672, 15672):  # AMQP, and the management API the tests ask
        assert ports[port].host_port == port
        # guest/guest logs in from anywhere in this image: never publish it beyond loopback.
        assert ports[port].host_ip in LOOPBACK


def test_rabbitmq_healthcheck_pings_the_node(compose: dict[str, Any]) -> None:
    check = service(compose, "rabbitmq")["healthcheck"]
    assert check["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]
    assert check.get("retries", 3) * _seconds(check["interval"]) >= 60  # a cold start


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


def test_rabbitsocks_is_built_here_and_waits_for_a_healthy_rabbitmq(
    compose: dict[str, Any],
) -> None:
    rabbitsocks = service(compose, "rabbitsocks")
    build = rabbitsocks["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (ROOT / context / dockerfile).resolve() == DOCKERFILE
    assert rabbitsocks["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    grace = _seconds(rabbitsocks.get("stop_grace_period", "10s"))
    assert grace > container_config(compose).shutdown_timeout


def test_every_variable_set_is_one_rabbitsocks_reads(compose: dict[str, Any]) -> None:
    env = environment(service(compose, "rabbitsocks"))
    assert env, "the container is wired by environment"
    unknown = sorted(set(env) - set(ENVIRONMENT))
    assert not unknown, f"rabbitsocks reads none of {unknown} (see rabbitsocks.config.ENVIRONMENT)"


def test_the_broker_is_the_rabbitmq_service(compose: dict[str, Any]) -> None:
    config = container_config(compose)
    assert config.effective_default_broker == "amqp"
    (url_text,) = config.brokers["amqp"].url
    url = urlsplit(url_text)
    assert url.hostname == "rabbitmq"  # the service name resolves on the compose network
    assert (url.port or 5672) in {p.container_port for p in published(service(compose, "rabbitmq"))}


@pytest.mark.parametrize(
    "host", [{}, {"RABBITSOCKS_RPC_TOKEN": "s3cret", "RABBITSOCKS_LOG_LEVEL": "debug"}]
)
def test_the_container_configuration_is_valid(
    compose: dict[str, Any], host: dict[str, str]
) -> None:
    config = container_config(compose, host)
    assert config.rpc.token == (host.get("RABBITSOCKS_RPC_TOKEN") or None)
    assert config.log.level == host.get("RABBITSOCKS_LOG_LEVEL", "info")


def test_published_ports_are_served_on_every_interface_of_the_container(
    compose: dict[str, Any],
) -> None:
    """A port published from a container reaches it on the container's network interface,
    so an endpoint bound to its loopback would refuse every connection."""
    config = container_config(compose)
    endpoints: dict[int, Interface] = {li.interface.port: li.interface for li in config.listeners}
    for interface in (config.rpc.http, config.rpc.goridge, config.admin):
        if interface is not None:
            endpoints[interface.port] = interface
    ports = published(service(compose, "rabbitsocks"))
    assert {p.container_port for p in ports} == set(endpoints)
    for port in ports:
        assert endpoints[port.container_port].host in EVERY_INTERFACE, port
        # The page is told the RPC port, and the RPC endpoint allows the page by its port.
        assert port.host_port == port.container_port, port
    listeners = {li.interface.port for li in config.listeners}
    for port in ports:
        if port.container_port not in listeners:
            assert port.host_ip in LOOPBACK, f"RPC and admin are not for the internet: {port}"


def test_rabbitsocks_healthcheck_asks_the_admin_endpoint(compose: dict[str, Any]) -> None:
    config = container_config(compose)
    assert config.admin is not None
    command = service(compose, "rabbitsocks")["healthcheck"]["test"]
    assert command[:3] == ["CMD", "python", "-c"]  # the image has python, not curl
    # Liveness: /ready fails during a RabbitMQ outage, which the bridge rides out.
    assert f"'http://127.0.0.1:{config.admin.port}/health'" in command[3]


def test_the_listener_serves_the_demo_page(compose: dict[str, Any]) -> None:
    (listener,) = container_config(compose).listeners
    assert listener.callback == "callbacks.pubsub"
    assert listener.demo is True


# --- the Dockerfile ----------------------------------------------------------------------


def image_config_path() -> str:
    """The configuration file the image's command runs."""
    command = _command()
    assert "-c" in command, f"the image runs an explicit configuration: {command}"
    return command[command.index("-c") + 1]


def _command() -> list[str]:
    final = dockerfile_stages()[-1]
    entrypoint = final.all("ENTRYPOINT")
    cmd = final.all("CMD")
    assert cmd or entrypoint, "the image has no command"
    return (exec_form(entrypoint[-1]) if entrypoint else []) + (exec_form(cmd[-1]) if cmd else [])


def container_config(compose: Mapping[str, Any], host: Mapping[str, str] | None = None) -> Config:
    """The configuration the container runs: the file its command names, as the final
    stage copies it from this repository, with the compose file's environment."""
    target = image_config_path()
    sources = [
        srcs
        for flags, srcs, dest in copies(dockerfile_stages()[-1])
        if "from" not in flags and dest == target
    ]
    assert sources, f"{target} is not copied into the image"
    (source,) = sources[-1]
    return load_config(ROOT / source, environ=environment(service(compose, "rabbitsocks"), host))


def test_the_command_is_rabbitsocks_serve() -> None:
    command = _command()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[0] in scripts, f"{command[0]} is not a command the wheel installs"
    assert command[1] == "serve"


def test_the_image_runs_the_python_rabbitsocks_supports_as_a_user() -> None:
    final = dockerfile_stages()[-1]
    assert re.fullmatch(r"python:3\.1[1-9]-slim", final.base)
    (user,) = final.all("USER")
    assert user.split(":")[0] not in ("root", "0")
    installs = " ".join(final.all("RUN"))
    assert "[speed]" in installs


def test_exposed_ports_are_the_published_ones(compose: dict[str, Any]) -> None:
    exposed = {
        int(p.split("/")[0]) for e in dockerfile_stages()[-1].all("EXPOSE") for p in e.split()
    }
    assert exposed == {p.container_port for p in published(service(compose, "rabbitsocks"))}


def test_copied_files_exist_and_are_in_the_build_context() -> None:
    stages = dockerfile_stages()
    for index, stage in enumerate(stages):
        earlier = {s.name for s in stages[:index]}
        for flags, sources, _ in copies(stage):
            if "from" in flags:
                assert flags["from"] in earlier, f"no stage {flags['from']!r} before it"
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
                assert not dockerignored(source.rstrip("/")), (
                    f"COPY {source}: .dockerignore drops it"
                )


def test_the_wheel_carries_the_demo_page_built_from_npm() -> None:
    stages = {s.name: s for s in dockerfile_stages()}
    assert stages["demo"].base.startswith("node:20")
    assert any("scripts/build-demo" in run for run in stages["demo"].all("RUN"))
    assert (ROOT / "scripts" / "build-demo").stat().st_mode & 0o111
    assert any(
        flags.get("from") == "demo" and dest.rstrip("/") == "rabbitsocks/demo"
        for flags, _, dest in copies(stages["wheel"])
    )


def test_dockerignore_keeps_local_state_out() -> None:
    for path in (
        ".venv",
        ".git",
        "demo/node_modules",
        "rabbitsocks/demo/index.html",
        "rabbitsocks/__pycache__",
        "test-artifacts",
        ".env",
    ):
        assert dockerignored(path), path
    for path in ("rabbitsocks/demo.py", "callbacks/pubsub.py", "config/docker.yaml"):
        assert not dockerignored(path), path
