"""The package's imports point down its layers, form no cycle, and reach no private name of another module.

Every import counts, also those inside functions and under TYPE_CHECKING: a lazy import is still a
dependency, and one that goes up, or closes a cycle, makes a change in one room break another.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sd3pose

PACKAGE = Path(sd3pose.__file__).parent

# Bottom to top: a module may import from its own layer or the ones before it.
LAYERS: list[tuple[str, ...]] = [
    ("sd3pose", "sd3pose.errors", "sd3pose.results", "sd3pose.cache", "sd3pose.settings"),
    ("sd3pose.sampling",),  # the samplers: maths on tensors, no model code
    ("sd3pose.request", "sd3pose.prompt_syntax"),  # the validated parameters of one generation
    ("sd3pose.comfy_workflow",),  # a request as the equivalent ComfyUI workflow
    ("sd3pose.images",),  # images in (SSRF-guarded fetch, decoding) and out (encoding)
    ("sd3pose.pose",),  # photo -> keypoints -> pose map
    ("sd3pose.engine",),  # SD3 + ControlNet on diffusers
    ("sd3pose.pipeline",),  # one request end to end
    ("sd3pose.jobs",),  # the queue contract and the job executor
    ("sd3pose.service",),  # HTTP, keys, credits, the embedded queue and its workers
    ("sd3pose.distributed",),  # Celery and Redis: the scaled-out backend
    ("sd3pose.cli",),  # the commands, which wire everything together
]


def layer_of(module: str) -> int:
    matches = [
        (len(prefix), index)
        for index, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        # The package itself is one module of the base layer, not a prefix of every module.
        if module == prefix or (prefix != "sd3pose" and module.startswith(prefix + "."))
    ]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_in(source: str, module: str, is_package: bool = False) -> list[tuple[str, list[str], int]]:
    """(imported sd3pose module, names taken from it, line) for every import in `source`, the text of
    `module`; relative imports are resolved against it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.startswith("sd3pose")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from ..pkg import x` in sd3pose.a.b means sd3pose.pkg
                anchor = module.split(".")[: len(module.split(".")) + is_package - node.level]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("sd3pose"):
                continue
            names = [alias.name for alias in node.names]
            # `from sd3pose.pkg import submodule` depends on the submodule itself.
            submodules = [name for name in names if f"{base}.{name}" in MODULES]
            found += [(f"{base}.{name}", [], node.lineno) for name in submodules]
            if len(submodules) < len(names):
                found.append((base, [name for name in names if name not in submodules], node.lineno))
    return found


def imports_of(module: str) -> list[tuple[str, list[str], int]]:
    path = MODULES[module]
    return imports_in(path.read_text(), module, is_package=path.name == "__init__.py")


def test_every_import_points_down_or_sideways() -> None:
    upward = [
        f"{module}:{line} imports {target} (layer {layer_of(target)} > {layer_of(module)})"
        for module in MODULES
        for target, _, line in imports_of(module)
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def _private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def test_no_module_uses_another_modules_private_names() -> None:
    private = [
        f"{module}:{line} takes {', '.join(filter(_private, names))} from {target}"
        for module in MODULES
        for target, names, line in imports_of(module)
        if target != module and any(_private(name) for name in names)
    ]
    assert private == []


def test_no_import_cycles() -> None:
    graph = {module: {target for target, _, _ in imports_of(module) if target in MODULES} for module in MODULES}
    cycles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module] - {module}):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize(
    ("module", "target", "ok"),
    [
        ("sd3pose.cli.serve", "sd3pose.distributed.service", True),
        ("sd3pose.service.app", "sd3pose.distributed.service", False),
        ("sd3pose.engine.engine", "sd3pose.request", True),
        ("sd3pose.request", "sd3pose.engine.engine", False),
    ],
)
def test_the_layer_rule_itself(module: str, target: str, ok: bool) -> None:
    assert (layer_of(target) <= layer_of(module)) is ok


def test_a_module_outside_every_layer_is_named() -> None:
    with pytest.raises(AssertionError, match="sd3pose.newroom is in no layer"):
        layer_of("sd3pose.newroom")


def test_relative_and_mixed_imports_count() -> None:
    source = "from ..service import app\nfrom . import loading\nfrom sd3pose.jobs import contract, _hidden\n"
    assert [target for target, _, _ in imports_in(source, "sd3pose.engine.engine")] == [
        "sd3pose.service.app",
        "sd3pose.engine.loading",
        "sd3pose.jobs.contract",
        "sd3pose.jobs",
    ]
    assert imports_in(source, "sd3pose.engine.engine")[3][1] == ["_hidden"]
    assert (
        imports_in("from .engine import Engine\n", "sd3pose.engine", is_package=True)[0][0] == "sd3pose.engine.engine"
    )
