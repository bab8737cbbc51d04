"""Imports run downhill (issue 12, point 5), type-only imports included.

Every module of rabbitsocks and callbacks has a layer; a module may import only modules of
its own layer or below. The layers are docs/architecture.md's "Imports run downhill"
section, from the bottom: a module that is not listed fails this test, so a new module
must be placed deliberately. Imports inside functions count too: a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Layers from the bottom; a module may import its own layer and those below.
LAYERS: list[tuple[str, ...]] = [
    (
        "rabbitsocks.errors",
        "rabbitsocks.frames",
        "rabbitsocks.messages",
        "rabbitsocks.topics",
        "rabbitsocks.stats",
        "rabbitsocks.logs",
        "rabbitsocks.httplog",
        "rabbitsocks.compat",
        "rabbitsocks.wire",
    ),
    ("rabbitsocks.origins", "rabbitsocks.config"),
    ("rabbitsocks.brokers",),
    ("rabbitsocks.pubsub",),
    ("rabbitsocks.services",),
    ("rabbitsocks.callback",),
    ("rabbitsocks.connection",),
    ("rabbitsocks.auth",),
    (
        "rabbitsocks.transports.__init__",
        "rabbitsocks.transports.batching",
        "rabbitsocks.transports.heartbeat",
        "rabbitsocks.transports.addresses",
    ),
    ("rabbitsocks.transports.gate",),
    ("rabbitsocks.transports.acceptor",),
    ("rabbitsocks.transports.websocket", "rabbitsocks.transports.affinity"),
    ("rabbitsocks.transports.session",),
    ("rabbitsocks.transports.bare", "rabbitsocks.transports.engineio"),
    ("rabbitsocks.transports.socketio",),
    ("rabbitsocks.transports.front",),
    # The public API: what callbacks import as ``rabbitsocks``. Its ``__getattr__`` loads
    # the server lazily, for the user: the one import upwards, by design.
    ("rabbitsocks.__init__",),
    ("rabbitsocks.stomp", "callbacks"),
    ("rabbitsocks.plan",),
    ("rabbitsocks.rpc", "rabbitsocks.demo", "rabbitsocks.admin", "rabbitsocks.workers"),
    ("rabbitsocks.server",),
    ("rabbitsocks.publish_cli", "rabbitsocks.cli", "rabbitsocks.__main__"),
]

#: Imports allowed upwards: (importer, imported) with the reason.
EXCEPTIONS = {
    ("rabbitsocks.__init__", "rabbitsocks.server"): "lazy, in __getattr__: the public API",
    ("rabbitsocks.__init__", "rabbitsocks.services"): "lazy, in __getattr__: the public API",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts)


def layer_of(module: str) -> int:
    best = -1
    best_length = -1
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    if best < 0:
        raise AssertionError(f"{module} is in no layer: place it in LAYERS")
    return best


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:  # "from rabbitsocks import server" imports a module
                found.add(f"{target}.{alias.name}")
    return {name for name in found if name.startswith(("rabbitsocks", "callbacks"))}


def known(module: str) -> str | None:
    """The module or package ``module`` names, if it exists in the tree."""
    path = ROOT / Path(*module.split("."))
    if path.with_suffix(".py").exists():
        return module
    if (path / "__init__.py").exists():
        return module + ".__init__"
    return None


SOURCES = sorted(
    p
    for p in [*(ROOT / "rabbitsocks").rglob("*.py"), *(ROOT / "callbacks").rglob("*.py")]
    if "rpc/pb" not in str(p)
)


@pytest.mark.parametrize("path", SOURCES, ids=[module_name(p) for p in SOURCES])
def test_imports_run_downhill(path: Path) -> None:
    importer = module_name(path)
    level = layer_of(importer)
    upward = []
    for name in sorted(imports(path)):
        target = known(name)
        if target is None or target == importer:
            continue
        if (importer, target) in EXCEPTIONS:
            continue
        if layer_of(target) > level:
            upward.append(target)
    assert not upward, f"{importer} imports upwards: {', '.join(upward)}"
