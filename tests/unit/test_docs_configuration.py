"""docs/configuration.md documents every key of the schema and every override."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from callbacks.pubsub import Options as PubSubOptions
from callbacks.stomp import Options as StompOptions
from rabbitsocks.config import ENVIRONMENT, Config
from tests.support.docs import ROOT


def keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("yaml", True):
            continue
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if "parse" in f.metadata:  # a scalar in YAML (an interface), parsed by hand
            out.append(f"{prefix}{f.name}")
        elif typing.get_origin(tp) is tuple:
            (item,) = typing.get_args(tp)[:1]
            out += keys(item, f"{prefix}{f.name}[].") if dataclasses.is_dataclass(item) else []
            out.append(f"{prefix}{f.name}")
        elif dataclasses.is_dataclass(tp) or inner:
            out += keys(tp if dataclasses.is_dataclass(tp) else inner[0], f"{prefix}{f.name}.")
        elif typing.get_origin(tp) in (typing.Mapping, dict) and f.name == "brokers":
            from rabbitsocks.config import BrokerConfig

            out += keys(BrokerConfig, "brokers.<name>.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


DOC = (ROOT / "docs/configuration.md").read_text()


@pytest.mark.parametrize("key", keys(Config))
def test_every_key_is_documented(key: str) -> None:
    section, _, leaf = key.rpartition(".")
    if section.startswith("listeners[]"):
        rest = section.removeprefix("listeners[]").lstrip(".")
        needle = f"`{rest}.{leaf}`" if rest else f"`{leaf}`"
        assert needle in DOC.split("## `listeners[]`")[1].split("\n## ")[0]
    elif section:
        head = section.split(".")[0]
        body = DOC.split(f"## `{head}")[1].split("\n## ")[0]
        assert f"`{leaf}`" in body
    else:
        assert f"`{leaf}`" in DOC.split("## Top level")[1].split("\n## ")[0]


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(PubSubOptions)])
def test_pubsub_options_are_documented(field: str) -> None:
    section = DOC.split("### `options` of `callbacks.pubsub`")[1]
    assert f"| `{field}` |" in section or f"| `{field}." in section


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(StompOptions)])
def test_stomp_options_are_documented(field: str) -> None:
    section = DOC.split("### `options` of `callbacks.stomp`")[1].split("\n## ")[0]
    assert f"`{field}`" in section


@pytest.mark.parametrize("var", list(ENVIRONMENT))
def test_every_environment_override_is_documented(var: str) -> None:
    assert re.search(rf"\| `{var}` \|", DOC)
