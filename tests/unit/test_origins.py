"""Origin allow-lists: only well-formed origins match, patterns by whole DNS labels."""

from __future__ import annotations

import pytest

from rabbitsocks.origins import OriginPolicy, normalise_origin, validate_origin_entry

POLICY = OriginPolicy(
    ["https://*.example.com", "https://app.example.org", "http://127.0.0.1:8080", "http://[::1]:81"]
)


@pytest.mark.parametrize(
    "origin",
    [
        "https://a.example.com",
        "https://a.b.example.com",
        "https://xn--bcher-kva.example.com",
        "HTTPS://A.EXAMPLE.COM",
        "https://a.example.com:443",
        "https://app.example.org",
        "http://127.0.0.1:8080",
        "http://[::1]:81",
        None,  # not a browser
    ],
)
def test_allowed(origin: str | None) -> None:
    assert POLICY.allows(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.com#.example.com",
        "https://evil.com?.example.com",
        "https://evil.com%2f.example.com",
        "https://evil.com%2F.example.com",
        "https://evil.com/.example.com",
        "https://evil.com\\.example.com",
        "https://user@a.example.com",
        "https://evil.com@a.example.com",
        "https://a.example.com/",
        "https://a.example.com/path",
        "https://a.example.com?x",
        "https://a.example.com#x",
        "https://a.example.com:8443",
        "https://a.example.com:99999",
        "https://a.example.com.",
        "https://-a.example.com",
        "https://a_b.example.com",
        "https://a..example.com",
        "https://.example.com",
        "https://*.example.com",
        "https://example.com",
        "https://a example.com",
        "https://a.example.com\r\n",
        "http://a.example.com",
        "wss://a.example.com",
        "https://app.example.org.evil.com",
        "https://app.example.org:8443",
        "http://127.0.0.01:8080",
        "null",
        "",
    ],
)
def test_refused(origin: str) -> None:
    assert not POLICY.allows(origin)


@pytest.mark.parametrize(
    ("entry", "normalised"),
    [
        ("*", "*"),
        ("https://App.Example.com:443", "https://app.example.com"),
        ("http://app.example.com:80/", "http://app.example.com"),
        ("https://*.Example.com:8443", "https://*.example.com:8443"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_entries_are_normalised_as_browsers_serialise(entry: str, normalised: str) -> None:
    assert validate_origin_entry(entry) == normalised


@pytest.mark.parametrize(
    "entry",
    [
        "https://*.evil.com#.example.com",
        "https://*.127.0.0.1",
        "https://a.*.example.com",
        "https://user@app.example.com",
        "https://app.example.com/path",
        "ftp://app.example.com",
        "app.example.com",
        "https://*",
    ],
)
def test_malformed_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        validate_origin_entry(entry)


def test_normalise_origin() -> None:
    assert normalise_origin("HTTP://LocalHost:80") == "http://localhost"
    assert normalise_origin("https://a.example.com#x") is None
