"""The import structure of `albert_jax/`: layers import downward only, and no module reaches into
another's private names. Read from the source with `ast` (module-level and function-level imports)."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "albert_jax"

# Lowest first; a module may import its own layer and the ones above it in this list, never below.
# The order is the data flow: tokenizer → data → model → run files and checkpoints → training → tools.
LAYERS: tuple[tuple[str, ...], ...] = (
    # what every module may use: error types, retries, the error path, the host allocator
    ("errors", "storage", "cli", "host_memory"),
    ("config", "hub", "hf_files", "tokenizer", "optim", "sharding", "kernels"),
    ("data.*", "tasks.*", "modeling"),
    ("hf", "checkpoint", "workdir", "run_lock", "config_drift", "pretrained", "inference"),
    ("training", "training.preemption"),  # `training` is the package's (empty) __init__
    ("training.trainer",),
    ("training.run", "training.summary"),
    ("training.pretrain", "training.finetune"),
    ("export", "plot", "__init__"),  # entry points and the package's front door
)


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts)
        out[name.removesuffix(".__init__") if name != "__init__" else name] = path
    return out


def _layer(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        for pattern in layer:
            if module == pattern or (pattern.endswith(".*") and module.startswith(pattern[:-1])):
                return i
            if pattern.endswith(".*") and module == pattern[:-2]:  # the package's __init__
                return i
    raise AssertionError(f"albert_jax/{module} is in no layer of tests/test_layers.py LAYERS")


def _imports(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> list[tuple[str, int, str | None]]:
    """(imported albert_jax module, line, imported name or None) for every import in `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [
                (a.name.removeprefix("albert_jax."), node.lineno, None)
                for a in node.names
                if a.name.startswith("albert_jax.")
            ]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "albert_jax":
            base = node.module.removeprefix("albert_jax").removeprefix(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                if sub in modules:  # `from albert_jax import workdir`: the module itself
                    out.append((sub, node.lineno, None))
                else:  # `from albert_jax.tokenizer import AlbertTokenizer`: a name of the module
                    out.append((base or "__init__", node.lineno, alias.name))
    return out


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downward_only(module):
    mine = _layer(module)
    upward = [
        f"line {line}: {target} (layer {_layer(target)})"
        for target, line, _ in _imports(MODULES[module], MODULES)
        if _layer(target) > mine
    ]
    assert not upward, f"albert_jax/{module} (layer {mine}) imports upward: {upward}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_uses_another_modules_private_names(module):
    tree = ast.parse(MODULES[module].read_text())
    imports = _imports(MODULES[module], MODULES)
    private = [
        f"line {line}: {target}.{name}" for target, line, name in imports if name and name.startswith("_")
    ]
    # `workdir_lib._x` style: attributes of a name bound to an albert_jax module.
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("albert_jax"):
            base = node.module.removeprefix("albert_jax").removeprefix(".")
            bound |= {
                a.asname or a.name for a in node.names if (f"{base}.{a.name}" if base else a.name) in MODULES
            }
        elif isinstance(node, ast.Import):
            bound |= {a.asname or a.name for a in node.names if a.name.startswith("albert_jax")}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            private.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    assert not private, f"albert_jax/{module} uses private names of other modules: {private}"


def test_the_checks_fail_on_an_upward_import_and_a_private_name(tmp_path):
    """The two checks above can fail: a layer-1 module importing training, and a private name."""
    bad = tmp_path / "config.py"
    bad.write_text("from albert_jax.training import trainer\nfrom albert_jax.tokenizer import _normalize\n")
    found = _imports(bad, MODULES)
    assert ("training.trainer", 1, None) in found and _layer("training.trainer") > _layer("config")
    assert ("tokenizer", 2, "_normalize") in found
