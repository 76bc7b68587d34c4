"""The import graph points one way (bench -> deploy -> compress), has no cycles among
deploy's modules, none among compress's (issue 21), and no module imports
another module's private (`_name`) names.

Every `import` is read with `ast`, including those inside functions, so an import hidden
in a function body counts like one at the top of the file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("compress", "deploy", "bench", "segcompress")
# a package may import the packages of lower layers, never those of higher ones
# (segcompress holds only the console entry that joins compress's and deploy's commands)
LAYERS = {"segcompress": 3, "bench": 2, "deploy": 1, "compress": 0}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, imported module, imported name or None) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found += [(node.lineno, base, alias.name) for alias in node.names]
    return found


def top(name: str) -> str:
    return name.split(".")[0]


def test_every_package_is_scanned():
    names = modules()
    for pkg in PACKAGES:
        assert pkg in names, pkg
    assert "deploy.runtime" in names and "compress.cli" in names


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_point_one_way(module):
    path = modules()[module]
    mine = top(module)
    wrong = [f"{path.relative_to(REPO)}:{line}: imports {target}"
             for line, target, _ in imports(path)
             if top(target) in LAYERS and LAYERS[top(target)] > LAYERS[mine]]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_private_names_across_modules(module):
    path = modules()[module]
    known = modules()
    wrong = []
    for line, target, name in imports(path):
        if top(target) not in LAYERS or name is None or target == module:
            continue
        if f"{target}.{name}" in known:  # a submodule, e.g. `from compress.data import _x`
            target, name = f"{target}.{name}", None
        parts = target.split(".") + ([name] if name else [])
        private = [p for p in parts if p.startswith("_") and not p.startswith("__")]
        if private:
            wrong.append(f"{path.relative_to(REPO)}:{line}: imports {target}.{name or ''}")
    assert not wrong, "\n".join(wrong)


def test_no_private_attribute_reach_across_modules():
    """`from deploy import runtime; runtime._in_batches(...)` is the same thing spelt later."""
    known = modules()
    wrong = []
    for module, path in known.items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for line, target, name in imports(path):
            full = f"{target}.{name}" if name else target
            if full in known and full != module:
                aliases[(name or target).split(".")[-1]] = full
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: "
                             f"{aliases[node.value.id]}.{node.attr}")
    assert not wrong, "\n".join(wrong)


def test_deploy_modules_have_no_cycle():
    known = modules()
    graph = {m: set() for m in known if top(m) == "deploy"}
    for m, deps in graph.items():
        for _, target, name in imports(known[m]):
            full = f"{target}.{name}" if name else target
            dep = full if full in graph else target if target in graph else None
            if dep and dep != m and dep != "deploy":
                deps.add(dep)
    cycles = []

    def visit(node, stack):
        for nxt in sorted(graph[node]):
            if nxt in stack:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif len(stack) < len(graph):
                visit(nxt, stack + [nxt])

    for m in sorted(graph):
        visit(m, [m])
    assert not cycles, "\n".join(sorted(set(cycles)))


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (function-level imports included;
    the package's own ``__init__`` left out: compress's loads its names lazily)."""
    known = modules()
    graph = {m: set() for m in known if top(m) == package}
    for m, deps in graph.items():
        for _, target, name in imports(known[m]):
            full = f"{target}.{name}" if name else target
            dep = full if full in graph else target if target in graph else None
            if dep and dep != m and dep != package:
                deps.add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan), largest first."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found, key=len, reverse=True)



def test_errors_import_nothing_of_the_project():
    """compress.errors is the bottom of every package: each one's errors build on it."""
    wrong = [f"compress/errors.py:{line}: imports {target}"
             for line, target, _ in imports(modules()["compress.errors"])
             if top(target) in LAYERS]
    assert not wrong, "\n".join(wrong)


def test_compress_has_no_import_cycle():
    """Issue 21: compress's modules form no import circle (function-level imports count).
    The last one (models, prune, qat, zoo, zoo.heads) went when the model floor took what
    the factory's variants need from it: the factory (``compress.models``) builds on the
    spec (``make_spec``), ``encoder_weights``, ``shrink``, ``multitask`` and the zoo's
    heads; ``prune`` and ``qat`` build on the factory."""
    found = cycles(import_graph("compress"))
    assert not found, "\n".join(" ".join(sorted(c)) for c in found)


def test_compress_data_is_in_no_cycle():
    in_cycle = {m for c in cycles(import_graph("compress")) for m in c}
    data = sorted(m for m in in_cycle if m == "compress.data" or m.startswith("compress.data."))
    assert not data, data



# "torch" is also the PyTorch library: these strings name the library, not the backend
LIBRARY_MENTIONS = {
    ("bench/latency.py", " MB (torch peak "),  # torch.cuda.max_memory_allocated
    ("bench/study.py", "; torch "),  # the torch version the study ran under
    ("bench/study.py", "torch"),  # its key in hardware_info's packages
    ("bench/study.py", " thread(s), float32, torch eager, each model at its training input size, "),
}
RUN_FILES = {"best.pt", "last.pt"}  # compress's run layout (checkpoints/best.pt), not a rule


def docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}


def backend_literals(text: str) -> list[str]:
    """The registry's backend names (as words) and file suffixes (bare or in a file name,
    compress's run files aside) spelled in ``text``."""
    import re

    from deploy import runtime as registry

    names = "|".join(map(re.escape, registry.names()))
    suffixes = "|".join(re.escape(s[1:]) for b in registry.backends() for s in b.suffixes)
    found = re.findall(rf"(?<![\w.-])(?:{names})(?!\w)", text)
    return found + [m for m in re.findall(rf"\w*\.(?:{suffixes})(?!\w)", text)
                    if m not in RUN_FILES]


def test_bench_spells_no_backend_name_or_suffix():
    """Issue 21: bench asks deploy's registry (``deploy.runtime``: names, suffixes,
    devices, precisions, converters) instead of spelling a backend, so a new backend is
    one module plus one registry line. Every string constant in bench and in deploy's
    manifest (whose ``environment`` takes the registry's packages; docstrings
    exempt; help text included) is checked against the registry's names and suffixes."""
    wrong = []
    for path in [*sorted((REPO / "bench").rglob("*.py")), REPO / "deploy" / "manifest.py"]:
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text())
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if (not isinstance(node, ast.Constant) or not isinstance(node.value, str)
                    or id(node) in skip or (rel, node.value) in LIBRARY_MENTIONS):
                continue
            hits = backend_literals(node.value)
            if hits:
                wrong.append(f"{rel}:{node.lineno}: {hits[0]!r} in {node.value[:60]!r}")
    assert not wrong, "ask deploy.runtime instead:\n" + "\n".join(wrong)


def test_backend_literal_scan_sees_a_literal():
    """The scan above catches a spelled backend (a regex that matched nothing would pass
    any code)."""
    assert backend_literals('if backend == "openvino"') == ["openvino"]
    assert backend_literals("tensorrt-int8, model_int8.engine, (.pt)") == [
        "tensorrt", "model_int8.engine", ".pt"]
    assert not backend_literals("PyTorch eager, torch_pruning, checkpoints/best.pt")

# compress.train is the loop and only the loop: what it calls lives with its owner
# (compress.rundir, compress.schedule, compress.evaluate, compress.data, compress.devices),
# so only the commands that run it import it: `compress compare` (bench.cli_study) hands
# the loop to bench.study.run_study as its trainer, as compress.cli calls it for train.
TRAIN_IMPORTERS = {"compress.cli": "the train and distill commands",
                   "bench.cli_study": "compare trains a study's missing runs"}
TRAIN_LINES = 600  # issue 21: the loop file holds fit, its set-up steps, the epoch, saving


def test_only_the_commands_import_the_loop():
    wrong = [f"{path.relative_to(REPO)}:{line}: imports {target}.{name or ''}"
             for module, path in modules().items()
             if module not in TRAIN_IMPORTERS and module != "compress.train"
             for line, target, name in imports(path)
             if target == "compress.train" or (target == "compress" and name == "train")]
    assert not wrong, "\n".join(wrong)


def test_the_loop_file_stays_short():
    lines = len((REPO / "compress" / "train.py").read_text().splitlines())
    assert lines <= TRAIN_LINES, f"compress/train.py has {lines} lines, over {TRAIN_LINES}"


@pytest.mark.parametrize("package", ["bench", "segcompress"])
def test_no_other_package_has_an_import_cycle(package):
    """Issue 21: no import circle anywhere (compress and deploy have their own tests above;
    across packages the one-way layering rules circles out)."""
    found = cycles(import_graph(package))
    assert not found, "\n".join(" ".join(sorted(c)) for c in found)


FUNCTION_IMPORTS = 20  # issue 21: compress's own modules imported inside functions


def function_level_imports(package: str) -> list[str]:
    """``file:line: module`` of every import of the project's own modules inside a function
    body of ``package`` (heavy third-party imports stay lazy and are not counted)."""
    found = []
    for module, path in modules().items():
        if top(module) != package:
            continue
        tree = ast.parse(path.read_text())
        functions = [n for n in ast.walk(tree)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        lines = {n.lineno for f in functions for n in ast.walk(f)
                 if isinstance(n, (ast.Import, ast.ImportFrom))}
        found += [f"{path.relative_to(REPO)}:{line}: {target}"
                  for line, target, _ in imports(path)
                  if line in lines and top(target) in LAYERS]
    return sorted(set(found))


def test_few_function_level_imports_in_compress():
    """Issue 21: an import hidden in a function is how a circle hides; compress keeps at
    most 20 of its own (most are the CLI's, which keeps ``--help`` free of torch)."""
    found = function_level_imports("compress")
    assert len(found) <= FUNCTION_IMPORTS, f"{len(found)} > {FUNCTION_IMPORTS}:\n" + "\n".join(found)


def test_function_level_import_count_sees_one():
    """The count above finds an import inside a function (one that found none would pass)."""
    found = function_level_imports("compress")
    assert any(f.startswith("compress/cli.py:") for f in found), found


def compress_modules_imported_by(package_or_module: str) -> set[str]:
    """compress's modules (``data`` for ``compress.data.*``) that a package or module
    imports, function-level imports included."""
    found = set()
    for module, path in modules().items():
        if module != package_or_module and top(module) != package_or_module:
            continue
        for _, target, name in imports(path):
            full = f"{target}.{name}" if name else target
            target = full if full in modules() else target
            if top(target) == "compress" and target != "compress":
                found.add(target.split(".")[1])
    return found


@pytest.mark.parametrize("who, sentence", [
    ("deploy", r"`deploy` imports `compress` \(modules: ([^)]*)\)"),
    ("compress.train", r"It imports \(modules:\s+([^)]*)\)"),
])
def test_architecture_doc_says_what_is_imported(who, sentence):
    """docs/ARCHITECTURE.md's lists of what deploy and the loop import are the code's."""
    import re

    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    match = re.search(sentence, text)
    assert match, f"docs/ARCHITECTURE.md lost the sentence {sentence!r}"
    said = {w.strip() for w in match.group(1).replace("\n", " ").split(",")}
    assert said == compress_modules_imported_by(who)


if __name__ == "__main__":  # python tests/test_layering.py: compress's import circles
    import sys

    sys.setrecursionlimit(10_000)
    for component in cycles(import_graph("compress")):
        print(len(component), " ".join(sorted(component)))
