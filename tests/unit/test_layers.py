"""Imports point down the layers of STYLE.md, and the pure core stays pure."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "soulstone"

# Lower number = lower layer; a module may import only its own layer or lower.
LAYERS = {
    "errors": 0, "paths": 0, "codex": 0, "files": 0, "sse": 0,
    "host": 1, "demo": 1,
    "forge": 2, "runtimes": 2, "artifacts": 2,
    "supervisor": 3,
    "guard": 4, "tools": 4, "lora": 4, "observe": 4,
    "dispatch": 5,
    "council": 6,
    "gateway": 7,
    "cli": 8, "__main__": 8,
}  # fmt: skip
PURE_CORE = {"errors", "codex", "sse"}
IMPURE_IN_CORE = {"soulstone.codex.load"}
PURE_ELSEWHERE = {"soulstone.forge.units", "soulstone.forge.quoting", "soulstone.forge.kube",
                  "soulstone.forge.kube_values", "soulstone.forge.yaml_text",
                  "soulstone.dispatch.refusals", "soulstone.council.models",
                  "soulstone.council.parse", "soulstone.council.validate",
                  "soulstone.council.route"}  # fmt: skip
PURE_THIRD_PARTY = {"pydantic", "jsonschema", "orjson"}
ONLY_IN = {"typer": {"cli"}, "rich": {"cli"}, "aiohttp.web": {"gateway"}}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_subpackage_has_a_layer() -> None:
    tops = {_top(name) for name, _ in _modules()} - {""}
    assert tops <= set(LAYERS), tops - set(LAYERS)


def test_imports_point_down() -> None:
    wrong = []
    for name, path in _modules():
        own = LAYERS.get(_top(name), 0)
        for imported in _imports(path):
            if imported.startswith("soulstone.") and LAYERS.get(_top(imported), 0) > own:
                wrong.append(f"{name} imports {imported}")
    assert not wrong, wrong


def test_third_party_imports_stay_in_their_layer() -> None:
    wrong = []
    for name, path in _modules():
        for imported in _imports(path):
            for library, allowed in ONLY_IN.items():
                if (imported == library or imported.startswith(library + ".")) and (
                    _top(name) not in allowed
                ):
                    wrong.append(f"{name} imports {imported}")
    assert not wrong, wrong


def test_pure_core_imports_only_stdlib_and_pure_libraries() -> None:
    wrong = []
    for name, path in _modules():
        pure = (_top(name) in PURE_CORE and name not in IMPURE_IN_CORE) or name in PURE_ELSEWHERE
        if not pure:
            continue
        for imported in _imports(path):
            root = imported.split(".")[0]
            if root == "soulstone":
                module = imported.rsplit(".", 1)[0] if imported.count(".") > 2 else imported
                allowed = _top(imported) in PURE_CORE | {""} or module in PURE_ELSEWHERE
                if imported in IMPURE_IN_CORE or not allowed:
                    wrong.append(f"{name} imports {imported}")
            elif root not in sys.stdlib_module_names and root not in PURE_THIRD_PARTY:
                wrong.append(f"{name} imports {imported}")
    assert not wrong, wrong
