"""Code blocks of the docs, so that tests can run every example."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def code_blocks(doc: str, lang: str | None = None) -> list[str]:
    """The fenced code blocks of ``docs/<doc>`` (or a path from the root), in order."""
    path = ROOT / doc if "/" in doc else ROOT / "docs" / doc
    blocks = _BLOCK.findall(path.read_text(encoding="utf-8"))
    return [body for language, body in blocks if lang is None or language == lang]
