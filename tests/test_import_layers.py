"""Imports run one way: the import graph of aapt_jax/ and kernels/ (read with ast, nothing
executed) has no cycle, and no module imports from a layer above its own.

The layers, lowest first, are written below. A module belongs to the layer of the longest
prefix that names it, so a layer can be a single module where a package spans two layers
(the attention API sits above the kernels that implement it, which sit above the jnp
reference and the window rule they check against). Imports inside functions count too.
The package's shape is checked here too: pyproject lists every package, binaries stay thin
and few functions run long.
"""

import ast
import pathlib
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

LAYERS = [
    # Helpers and pure math that import nothing of the project.
    ("aapt_jax.fields", "aapt_jax.timing", "aapt_jax.parallel.mesh", "aapt_jax.parallel.sharding",
     "aapt_jax.model.window", "aapt_jax.model.reference_attention", "aapt_jax.model.flow",
     "aapt_jax.model.camera", "aapt_jax.model.rope"),
    # The Pallas kernels (kernels/, installed as aapt_jax.kernels), checked against the reference.
    ("aapt_jax.kernels",),
    # The attention API, which dispatches to the kernels, and the KV cache.
    ("aapt_jax.model.attention", "aapt_jax.model.kv_cache"),
    # Context parallelism over the attention API.
    ("aapt_jax.parallel",),
    # The models: DiT, discriminator, VAE, controls.
    ("aapt_jax.model",),
    # From an experiment config to the validated model configs.
    ("aapt_jax.configs",),
    # Data sources and files.
    ("aapt_jax.data", "aapt_jax.io"),
    # Samplers.
    ("aapt_jax.sample",),
    # Training: stages, loop, pipeline.
    ("aapt_jax.train",),
    # Evaluation and the streaming server.
    ("aapt_jax.eval", "aapt_jax.serve"),
    # Benchmarks and what the binaries share (their error contract, their allocator).
    ("aapt_jax.bench", "aapt_jax.cli", "aapt_jax.host_malloc"),
]
REPO_ONLY = ("configs", "launch", "kernels")  # top-level folders the library must not import by those names


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "kernels":  # installed as aapt_jax.kernels (pyproject.toml package-dir)
        parts.insert(0, "aapt_jax")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted([*ROOT.glob("aapt_jax/**/*.py"), *ROOT.glob("kernels/*.py")])}


def _imported(name: str, path: pathlib.Path) -> set[str]:
    """Every module name ``name`` imports: ``from a.b import c`` is ``a.b.c`` when that is a
    module, else ``a.b``; relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


def _internal(target: str) -> str | None:
    """The project module ``target`` names (the longest module prefix), or None."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _layer(name: str) -> int:
    best = max(((len(prefix), i) for i, prefixes in enumerate(LAYERS) for prefix in prefixes
                if name == prefix or name.startswith(prefix + ".")), default=None)
    return 0 if name == "aapt_jax" else best[1] if best else -1


GRAPH = {name: {t for t in map(_internal, _imported(name, path)) if t and t != name}
         for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    assert MODULES and "aapt_jax.kernels.registry" in MODULES and "aapt_jax.model.attention" in MODULES
    assert [name for name in MODULES if _layer(name) < 0] == []


def test_no_import_from_a_higher_layer():
    wrong = [f"{name} (layer {_layer(name)}) imports {t} (layer {_layer(t)})"
             for name, targets in sorted(GRAPH.items()) for t in sorted(targets) if _layer(t) > _layer(name)]
    assert wrong == []


def test_the_library_imports_no_repository_folder():
    wrong = [f"{name} imports {target}" for name, path in sorted(MODULES.items())
             for target in sorted(_imported(name, path)) if target.split(".")[0] in REPO_ONLY]
    assert wrong == []


def test_no_import_cycle():
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for t in sorted(GRAPH[node]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[node] = "done"

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    assert cycles == []


@pytest.mark.parametrize("rule", ["layers", "pyproject"])
def test_pyproject_installs_every_package(rule):
    """pyproject.toml lists its packages by name: a new subpackage must be added there."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    if rule == "layers":
        assert packages <= set(tool["packages"])
    else:
        assert tool["package-dir"] == {"aapt_jax.kernels": "kernels"}
        listed = {p for p in tool["packages"] if p.startswith("aapt_jax")}
        assert listed - packages == {"aapt_jax.serve.static"}  # the page's files (data)


def test_package_data_holds_every_shipped_weight_file():
    """A wheel (``pip install .``, not editable) carries the built-in weights: every file under
    aapt_jax/weights matches a package-data pattern (setuptools' globs, ``**`` recursive)."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["aapt_jax"]
    package = ROOT / "aapt_jax"
    listed = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    shipped = {p for p in (package / "weights").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert any(p.suffix == ".safetensors" and "transformer" in p.parts for p in shipped)
    assert sorted(map(str, shipped - listed)) == []


def test_every_binary_main_is_thin():
    """A binary in launch/ parses flags and calls the library: its ``main`` stays short."""
    long = {}
    for path in sorted((ROOT / "launch").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name == "main" and node.end_lineno - node.lineno >= 30:
                long[path.name] = node.end_lineno - node.lineno + 1
    assert long == {}


def test_few_long_functions():
    """Functions stay short enough to read whole: at most three in the tree run over 60 lines."""
    long = []
    for folder in ("aapt_jax", "kernels", "launch", "configs", "aapt_torch"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert len(long) <= 3, long
