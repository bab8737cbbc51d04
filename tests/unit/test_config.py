"""Configuration validation: every mistake is one line naming the file, key and expectation.

Mistakes are found by parsing (``parse_config``, pure) and by resolving the callbacks
(``plan_config``), the two steps ``rabbitsocks check`` and ``serve`` both take."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rabbitsocks.config import (
    Interface,
    load_config,
    parse_config,
    parse_interface,
)
from rabbitsocks.errors import ConfigError
from rabbitsocks.plan import plan_config

ROOT = Path(__file__).resolve().parents[2]


def error_of(raw: object, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        plan_config(parse_config(raw, source="x.yaml", environ=environ or {}))
    text = str(info.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (8080, Interface(None, 8080)),
        ("8080", Interface(None, 8080)),
        ("127.0.0.1:8080", Interface("127.0.0.1", 8080)),
        ("[::1]:8080", Interface("::1", 8080)),
        ("localhost:0", Interface("localhost", 0)),
    ],
)
def test_interfaces(raw: object, expected: Interface) -> None:
    assert parse_interface(raw) == expected


def test_minimal_file_gets_defaults() -> None:
    config = parse_config({"listeners": [{"interface": 8080}]}, environ={})
    (listener,) = config.listeners
    assert listener.callback == "callbacks.pubsub"
    assert listener.websocket.heartbeat == 20.0
    assert config.effective_default_broker == "memory"


def test_several_listeners_each_with_its_callback() -> None:
    config = parse_config(
        {
            "listeners": [
                {"interface": "127.0.0.1:8080", "callback": "callbacks.pubsub"},
                {"interface": 8081, "callback": "callbacks.echo"},
            ]
        },
        environ={},
    )
    assert [li.callback for li in config.listeners] == ["callbacks.pubsub", "callbacks.echo"]
    assert config.listeners[1].key == "listeners[1]"


def test_parsing_imports_no_callback_and_keeps_options_raw(tmp_path: Path) -> None:
    """Callbacks are resolved once, by plan_config, not while the YAML is read."""
    (tmp_path / "cb_with_side_effects.py").write_text(
        "raise RuntimeError('imported while parsing')\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        config = parse_config(
            {
                "listeners": [
                    {"interface": 1, "callback": "cb_with_side_effects", "options": {"x": 1}}
                ]
            },
            environ={},
        )
        assert "cb_with_side_effects" not in sys.modules
        assert config.listeners[0].options == {"x": 1}
    finally:
        sys.path.remove(str(tmp_path))


def test_plan_parses_options_against_the_callbacks_options() -> None:
    from callbacks.echo import Options as EchoOptions
    from callbacks.pubsub import Options as PubSubOptions

    plan = plan_config(
        parse_config(
            {
                "listeners": [
                    {"interface": 8080, "options": {"max_topics": 5, "broker": "amqp"}},
                    {"interface": 8081, "callback": "callbacks.echo"},
                ],
                "brokers": {"amqp": {}},
            },
            environ={},
        )
    )
    first, second = plan.listeners
    assert first.config.options == PubSubOptions(max_topics=5, broker="amqp")
    assert second.config.options == EchoOptions()
    assert plan.config.listeners == (first.config, second.config)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "x.yaml: listeners: missing required key"),
        ({"listeners": []}, "x.yaml: listeners: expected at least one listener"),
        ({"listeners": {}}, "x.yaml: listeners: expected a list, got {} (dict)"),
        (
            {"listeners": [{"interface": 8080}], "colour": "red"},
            "x.yaml: colour: unknown key (expected one of: listeners, brokers, default_broker,"
            " rpc, admin, log, shutdown_timeout)",
        ),
        (
            {"listeners": [{"interface": "nowhere"}]},
            'x.yaml: listeners[0].interface: expected a port (8080) or "host:port"'
            ' ("127.0.0.1:8080", "[::1]:8080"), got \'nowhere\' (str)',
        ),
        (
            {"listeners": [{"interface": 70000}]},
            "x.yaml: listeners[0].interface: expected a port between 0 and 65535, got 70000",
        ),
        (
            {"listeners": [{"interface": "::1:80"}]},
            'x.yaml: listeners[0].interface: expected an IPv6 host in brackets ("[::1]:8080"),'
            " got '::1:80' (str)",
        ),
        (
            {"listeners": [{"interface": 1, "websocket": {"heartbeat": "often"}}]},
            "x.yaml: listeners[0].websocket.heartbeat: expected a number, got 'often' (str)",
        ),
        (
            {"listeners": [{"interface": 1, "websocket": {"compress": "yes"}}]},
            "x.yaml: listeners[0].websocket.compress: expected true or false, got 'yes' (str)",
        ),
        (
            {"listeners": [{"interface": 1, "limits": {"max_outbound_bytes": True}}]},
            "x.yaml: listeners[0].limits.max_outbound_bytes: expected an integer, got True (bool)",
        ),
        (
            {"listeners": [{"interface": 1, "tls": {"cert": "c.pem"}}]},
            "x.yaml: listeners[0].tls.key: missing required key",
        ),
        (
            {"listeners": [{"interface": 1, "callback": "no_such_module_here"}]},
            "x.yaml: listeners[0].callback: cannot import 'no_such_module_here':"
            " no module named 'no_such_module_here' (is it on the Python path?)",
        ),
        (
            {"listeners": [{"interface": 1, "callback": "json"}]},
            "x.yaml: listeners[0].callback: json lacks the required functions"
            " subprotocol_name(), init(), open(), handle_frame(), terminate()",
        ),
        (
            {"listeners": [{"interface": 1, "callback": "callbacks.echo:nope"}]},
            "x.yaml: listeners[0].callback: 'callbacks.echo' has no attribute 'nope'",
        ),
        (
            {"listeners": [{"interface": 1, "options": {"max_topics": "many"}}]},
            "x.yaml: listeners[0].options.max_topics: expected an integer, got 'many' (str)",
        ),
        (
            {"listeners": [{"interface": 1, "options": {"colour": 1}}]},
            "x.yaml: listeners[0].options.colour: unknown key (expected one of: broker,"
            " wildcards, max_topics, join_auth, topics_claim, rate, burst, max_rate_violations)",
        ),
        (
            {"listeners": [{"interface": 1, "options": {"max_topics": 0}}]},
            "x.yaml: listeners[0].options.max_topics: expected an integer >= 1, got 0",
        ),
        (
            {"listeners": [{"interface": 8080}, {"interface": "127.0.0.1:8080"}]},
            "x.yaml: listeners[1].interface: port 8080 is already used by listeners[0]"
            " (expected a distinct port)",
        ),
        (
            {"listeners": [{"interface": 1}], "brokers": {"amqp": {"url": "http://x"}}},
            "x.yaml: brokers.amqp.url: expected an amqp:// or amqps:// URL, got 'http://x' (str)",
        ),
        (
            {"listeners": [{"interface": 1}], "brokers": {"amqp": {"type": "kafka"}}},
            "x.yaml: brokers.amqp.type: expected one of 'amqp', 'memory', got 'kafka' (str)",
        ),
        (
            {
                "listeners": [{"interface": 1}],
                "brokers": {"amqp": {"reconnect_min": 5, "reconnect_max": 1}},
            },
            "x.yaml: brokers.amqp: expected 0 < reconnect_min <= reconnect_max",
        ),
        (
            {"listeners": [{"interface": 1}], "default_broker": "amqp"},
            "x.yaml: default_broker: expected one of the configured brokers (memory), got 'amqp'",
        ),
        (
            {"listeners": [{"interface": 1}], "log": {"level": "loud"}},
            "x.yaml: log.level: expected one of 'debug', 'info', 'warning', 'error',"
            " got 'loud' (str)",
        ),
    ],
)
def test_each_mistake_has_one_precise_line(raw: object, message: str) -> None:
    assert error_of(raw) == message


def test_passwords_are_masked_in_errors() -> None:
    text = error_of(
        {"listeners": [{"interface": 1}], "brokers": {"b": {"url": "http://u:secret@h/"}}}
    )
    assert "secret" not in text
    assert "u:***@h/" in text


def test_amqp_url_from_the_environment_adds_the_default_broker() -> None:
    config = parse_config(
        {"listeners": [{"interface": 1}]},
        environ={"RABBITSOCKS_AMQP_URL": "amqp://u:p@rabbit:5672/"},
    )
    assert config.brokers["amqp"].url == ("amqp://u:p@rabbit:5672/",)
    assert config.brokers["amqp"].exchange == "amq.topic"
    assert config.effective_default_broker == "amqp"
    assert "memory" in config.broker_names


def test_environment_overrides_the_file() -> None:
    config = parse_config(
        {
            "listeners": [{"interface": 1}],
            "brokers": {"amqp": {"url": "amqp://a/", "exchange": "x"}},
            "log": {"level": "info"},
        },
        environ={
            "RABBITSOCKS_AMQP_URL": "amqp://b/",
            "RABBITSOCKS_AMQP_EXCHANGE": "y",
            "RABBITSOCKS_LOG_LEVEL": "DEBUG",
            "RABBITSOCKS_LOG_FORMAT": "json",
            "RABBITSOCKS_LISTEN": "0.0.0.0:9000",
            "RABBITSOCKS_DEFAULT_BROKER": "memory",
        },
    )
    assert (config.brokers["amqp"].url, config.brokers["amqp"].exchange) == (("amqp://b/",), "y")
    assert (config.log.level, config.log.format) == ("debug", "json")
    assert config.listeners[0].interface == Interface("0.0.0.0", 9000)
    assert config.effective_default_broker == "memory"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"RABBITSOCKS_AMQP_URL": "redis://x"},
            "environment: RABBITSOCKS_AMQP_URL: expected an amqp:// or amqps:// URL,"
            " got 'redis://x' (str)",
        ),
        (
            {"RABBITSOCKS_LOG_LEVEL": "loud"},
            "environment: RABBITSOCKS_LOG_LEVEL: expected one of 'debug', 'info', 'warning',"
            " 'error', got 'loud' (str)",
        ),
        (
            {"RABBITSOCKS_LISTEN": "x:y"},
            'environment: RABBITSOCKS_LISTEN: expected a port (8080) or "host:port"'
            ' ("127.0.0.1:8080", "[::1]:8080"), got \'x:y\' (str)',
        ),
    ],
)
def test_environment_mistakes(environ: dict[str, str], message: str) -> None:
    assert error_of({"listeners": [{"interface": 1}]}, environ) == message


def test_load_config_names_the_file_and_the_yaml_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("listeners:\n  - interface: [8080\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith(f"{path}: line ")
    assert "not valid YAML" in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such file"):
        load_config("nope.yaml", environ={})


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_are_valid(path: Path) -> None:
    load_config(path, environ={})


def test_default_config_is_a_pubsub_listener_on_memory() -> None:
    config = load_config(None, environ={})
    (listener,) = config.listeners
    assert str(listener.interface) == "127.0.0.1:8080"
    assert listener.callback == "callbacks.pubsub"
    assert config.effective_default_broker == "memory"


def test_broker_settings_reach_the_amqp_broker() -> None:
    from rabbitsocks.services import Services

    config = parse_config(
        {
            "listeners": [{"interface": 1}],
            "brokers": {"amqp": {"reconnect_min": 0.1, "reconnect_max": 2, "exchange": "x"}},
        },
        environ={},
    )
    broker = Services.from_config(config).brokers["amqp"]
    assert (broker._reconnect_min, broker._reconnect_max) == (0.1, 2.0)  # type: ignore[attr-defined]
    assert broker._exchange == "x"  # type: ignore[attr-defined]


# --- several URLs, heartbeat, probe, TLS (issue 14) -------------------------------------------


def amqp_error(broker: dict[str, object], environ: dict[str, str] | None = None) -> str:
    return error_of({"listeners": [{"interface": 1}], "brokers": {"amqp": broker}}, environ)


def test_a_comma_separated_url_in_yaml_is_refused_with_the_key() -> None:
    # Regression: this passed `check`, then every reconnect failed with "port can't be
    # converted to integer".
    message = amqp_error({"url": "amqp://u:secret@a:5672/,amqp://u:secret@b:5672/"})
    assert message.startswith("x.yaml: brokers.amqp.url: expected one URL, got several")
    assert "write them as a YAML list" in message
    assert "secret" not in message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://a:notaport/", "brokers.amqp.url: expected an amqp:// or amqps:// URL, got"),
        ("amqp:///vhost", "brokers.amqp.url: expected an amqp:// or amqps:// URL with a host"),
        (["amqp://a/", "amqp://b:99999/"], "brokers.amqp.url: [1]: expected"),
        ([], "brokers.amqp.url: expected an amqp:// or amqps:// URL or a list of them"),
        ([1], "brokers.amqp.url: [0]: expected an amqp:// or amqps:// URL, got 1 (int)"),
    ],
)
def test_urls_serve_cannot_use_are_refused(url: object, expected: str) -> None:
    assert amqp_error({"url": url}).startswith(f"x.yaml: {expected}")


def test_a_list_of_urls_is_tried_in_turn() -> None:
    from rabbitsocks.brokers.amqp import AmqpBroker
    from rabbitsocks.services import make_broker

    config = parse_config(
        {
            "listeners": [{"interface": 1}],
            "brokers": {"amqp": {"url": ["amqp://u:p@a:5672/", "amqps://u:p@b/"]}},
        },
        environ={},
    )
    assert config.brokers["amqp"].url == ("amqp://u:p@a:5672/", "amqps://u:p@b/")
    broker = make_broker("amqp", config.brokers["amqp"])
    assert isinstance(broker, AmqpBroker)
    assert broker.urls == ("amqp://u:***@a:5672/", "amqps://u:***@b/")


@pytest.mark.parametrize(
    "value",
    [
        "amqp://u:p@a:5672/ amqp://u:p@b:5672/",
        "amqp://u:p@a:5672/,amqp://u:p@b:5672/",
        " amqp://u:p@a:5672/ ,\tamqp://u:p@b:5672/\n",
    ],
)
def test_the_environment_takes_several_urls(value: str) -> None:
    config = parse_config(
        {"listeners": [{"interface": 1}]}, environ={"RABBITSOCKS_AMQP_URL": value}
    )
    assert config.brokers["amqp"].url == ("amqp://u:p@a:5672/", "amqp://u:p@b:5672/")


def test_a_comma_in_a_password_is_not_a_separator() -> None:
    config = parse_config(
        {"listeners": [{"interface": 1}]}, environ={"RABBITSOCKS_AMQP_URL": "amqp://u:a,b@h/"}
    )
    assert config.brokers["amqp"].url == ("amqp://u:a,b@h/",)


def test_a_bad_url_in_the_environment_list_is_named() -> None:
    message = error_of(
        {"listeners": [{"interface": 1}]}, {"RABBITSOCKS_AMQP_URL": "amqp://a/ amqp://b:x/"}
    )
    assert message.startswith("environment: RABBITSOCKS_AMQP_URL: expected an amqp://")
    assert message.endswith("(URL 2 of 2)")


def test_liveness_keys_have_production_defaults_and_reach_the_broker() -> None:
    from rabbitsocks.services import make_broker

    defaults = parse_config({"listeners": [{"interface": 1}], "brokers": {"amqp": {}}}, environ={})
    settings = defaults.brokers["amqp"]
    assert (settings.heartbeat, settings.probe_interval, settings.probe_timeout) == (10, 2.0, 3.0)
    # The broker's confirm timeout is below RPC's, so that "outcome unknown" is reachable.
    assert settings.confirm_timeout < defaults.rpc.confirm_timeout
    broker = make_broker("amqp", settings)
    assert broker._heartbeat == 10  # type: ignore[attr-defined]
    assert broker._probe_interval == 2.0  # type: ignore[attr-defined]
    assert "heartbeat=10" in broker._connect_url(0)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("broker", "expected"),
    [
        ({"heartbeat": -1}, "brokers.amqp.heartbeat: expected an integer >= 0, got -1"),
        ({"heartbeat": 70000}, "brokers.amqp.heartbeat: expected at most 65535 seconds"),
        ({"heartbeat": 1.5}, "brokers.amqp.heartbeat: expected an integer, got 1.5 (float)"),
        ({"probe_timeout": 0}, "brokers.amqp.probe_timeout: expected a number > 0, got 0"),
        ({"connect_timeout": -1}, "brokers.amqp.connect_timeout: expected a number > 0"),
        (
            {"tls": {"cert_file": "c.pem"}},
            "brokers.amqp.tls.key_file: expected both cert_file and key_file, or neither",
        ),
        (
            {"url": "amqps://h/", "tls": {"ca_file": "/no/such/ca.pem"}},
            "brokers.amqp.tls.ca_file: no such file",
        ),
        ({"tls": {"verify": "yes"}}, "brokers.amqp.tls.verify: expected true or false"),
    ],
)
def test_liveness_and_tls_mistakes(broker: dict[str, object], expected: str) -> None:
    assert amqp_error(broker).startswith(f"x.yaml: {expected}")


def test_tls_without_an_amqps_url_is_refused() -> None:
    # Silently ignored settings would mean plain text where TLS was meant.
    message = amqp_error({"url": "amqp://h/", "tls": {"verify": False}})
    assert message == (
        "x.yaml: brokers.amqp.tls: set, but no URL is amqps:// (TLS applies to amqps:// URLs only)"
    )


def test_broker_tls_files_must_load(tmp_path: Path) -> None:
    from tests.support.rabbitmq import make_tls_files

    files = make_tls_files(tmp_path / "tls")
    good = {
        "url": "amqps://h/",
        "tls": {
            "ca_file": str(files.ca),
            "cert_file": str(files.client_cert),
            "key_file": str(files.client_key),
        },
    }
    config = parse_config({"listeners": [{"interface": 1}], "brokers": {"amqp": good}}, environ={})
    assert config.brokers["amqp"].tls.ca_file == str(files.ca)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    bad_ca = amqp_error({"url": "amqps://h/", "tls": {"ca_file": str(garbage)}})
    assert bad_ca.startswith(f"x.yaml: brokers.amqp.tls.ca_file: cannot load '{garbage}'")
    mismatched = {**good["tls"], "key_file": str(files.key)}  # the server's key
    bad_pair = amqp_error({"url": "amqps://h/", "tls": mismatched})
    assert bad_pair.startswith("x.yaml: brokers.amqp.tls.cert_file: cannot load certificate")
