"""The package's shape: no import cycles, imports pointing down the layers only, and one source of
defaults for the training options."""

import ast
from pathlib import Path

import click

from spikeformers.cli import main
from spikeformers.engine.config import TrainConfig, flat_fields

PKG = Path(__file__).resolve().parents[1] / "spikeformers"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(mod: str, is_pkg: bool, level: int, target: str | None) -> str:
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in the file, function bodies included)."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node.level, node.module) if node.level else (node.module or "")
                for alias in node.names:   # `from . import x` may name a submodule
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in mods else base)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                while t and t not in mods:     # spikeformers.x.y.Name -> spikeformers.x.y
                    t = t.rpartition(".")[0]
                if t.startswith("spikeformers") and t != mod:
                    graph[mod].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found


def test_the_graph_reader_sees_known_edges_and_cycles():
    g = import_graph()
    assert "spikeformers.nn.neurons" in g["spikeformers.nn.layers"]              # from .neurons import LIF
    assert "spikeformers.kernels" in g["spikeformers.nn.neurons"]                # from .. import kernels
    assert "spikeformers.nn.attention" in g["spikeformers.models.sdt"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_imports_point_down_the_layers():
    """nn/ and models/ never import the transforms, the engine or the analysis; kernels/ and
    errors import nothing of ours but errors."""
    g = import_graph()
    upper = ("spikeformers.accel", "spikeformers.engine", "spikeformers.analysis", "spikeformers.cli",
             "spikeformers.data")
    for mod, deps in g.items():
        if mod.startswith(("spikeformers.nn", "spikeformers.models")):
            bad = sorted(d for d in deps if d.startswith(upper))
            assert not bad, f"{mod} imports {bad}"
        if mod.startswith("spikeformers.kernels"):
            bad = sorted(d for d in deps if not d.startswith(("spikeformers.kernels", "spikeformers.errors")))
            assert not bad, f"{mod} imports {bad}"
    assert g["spikeformers.errors"] == set()


def test_train_options_take_their_defaults_from_the_config():
    """Every `spikeformers train` option that names a training option has the config's default
    (or None: the config's default applies)."""
    fields = flat_fields()
    cmd = main.commands["train"]
    checked = 0
    for p in cmd.params:
        if not isinstance(p, click.Option) or p.name not in fields:
            continue
        checked += 1
        assert p.default is None or p.default == TrainConfig.default(p.name), (p.name, p.default)
    assert checked >= 20


def test_config_reads_nested_flat_and_mixed_and_names_unknown_options():
    a = TrainConfig.from_dict({"optim": {"lr": 0.5}, "epochs": 3, "model": "sdt_2_256_cifar"})
    assert a.optim.lr == 0.5 and a.schedule.epochs == 3 and a.model.name == "sdt_2_256_cifar"
    assert TrainConfig.from_dict(a.to_dict()) == a and TrainConfig.from_dict(a.flat()) == a
    assert a.replace(lr=0.1).optim.lr == 0.1 and a.optim.lr == 0.5
    for bad in ({"lrr": 1}, {"optim": {"epochs": 3}}):
        try:
            TrainConfig.from_dict(bad)
        except ValueError as e:
            assert ("lrr" in str(e)) or ("epochs" in str(e) and "optim" in str(e))
        else:
            raise AssertionError(f"{bad} was accepted")


def test_the_repository_speaks_of_the_project_only():
    """No word of how or when the code was written, and no pointer to files outside the repository,
    in any tracked text file (code, comments, configs, tests, docs)."""
    import re
    import subprocess

    root = PKG.parent
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    words = [r"\bsessions?\b", r"\bissue[ -]?#?\d", "\u00a7", r"\.\./shared", r"/work/", r"(?-i:DESIGN\.md)", r"\bspecs?/"]
    pattern = re.compile("|".join(words), re.IGNORECASE)
    hits = []
    for name in files:
        path = root / name
        if name == "tests/test_architecture.py" or not path.is_file() or path.suffix in (".png", ".pt", ".safetensors"):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{name}:{i}: {line.strip()[:80]}" for i, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
        hits += [f"file name {name}" for w in words if re.search(w, name, re.IGNORECASE)]
    assert not hits, "\n".join(hits[:30])
