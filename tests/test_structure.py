"""ember's structure, checked from the sources (stdlib ``ast`` only; ember is not imported).

The rules are those of ARCHITECTURE.md; each test names the file and line that breaks one and
says what to do. What the tests decide, and why:

* Modules. Every ``.py`` file under ``python/ember`` is a module; a package's ``__init__.py`` is
  the package's own module (``ember/train/__init__.py`` is ``ember.train``, ``ember/__init__.py``
  is ``ember``). The compiled modules ``ember._cpu`` and ``ember._cuda`` have no source here and
  are leaves.
* Import edges. ``import ember.a.b``, ``from ember.a import b`` (``b`` a submodule),
  ``from ember.a.b import c`` and relative imports give an edge to ``ember.a.b``; ``from ember.a
  import c`` with ``c`` not a submodule gives an edge to the package ``ember.a`` (its
  ``__init__`` must run to the end to define ``c``). Importing ``ember.a.b`` also runs the package
  ``ember.a``'s ``__init__`` first, so that is an edge too -- unless ``ember.a`` contains the
  importing module (Python has already started it). Imports inside functions count like any
  other; imports under ``if TYPE_CHECKING:`` never run and are left out of the graph.
* The package root. ``ember/__init__.py`` imports nearly everything, and is treated like any
  other module: a submodule that imports the root (``import ember``, ``from ember import
  __version__``, ``from ember import Trainer``) closes a cycle and fails. Submodules take the
  version from ``ember._version`` and names from the module that defines them. The root is only
  left out as the implicit parent of every ``ember.x`` (it is always the module being started).
* Private names. ``_x`` (not ``__x__``) is private to its module: no ``from ember.m import _x``
  and no ``m._x`` on an imported ember module. Private-named *modules* (``ember._io``,
  ``ember._validate``, ``ember._version``, ``ember._cuda_ops``) may be imported as modules; the
  compiled modules and ``ember._cuda_ops`` only by the modules in ``RESTRICTED``.
* GPU-only modules. ``ember._cuda_ops`` raises ImportError on a build without CUDA, so outside
  the GPU-only modules it (and ``ember.train.cuda_graph``) is imported inside a function or
  under ``try/except ImportError``: ``import ember`` must work on a CPU-only build.
* Also checked: every ``from ember.m import x`` names a module or a name ``m`` binds (a moved
  module shows up here first), each layer imports only its own or lower layers (``LAYERS``, the
  order of ARCHITECTURE.md), no folder of modules lacks ``__init__.py``, no ``x.py`` sits beside
  a package ``x/``, and ARCHITECTURE.md names no file that is gone.

Run without building ember: ``pytest --noconftest tests/test_structure.py``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "python" / "ember"
CSRC = ROOT / "csrc"
ARCH = ROOT / "ARCHITECTURE.md"

#: Compiled extension modules: no source under python/ember.
COMPILED = {"ember._cpu", "ember._cuda"}

#: Who may import these modules (any form: ``import``, ``from ... import``, ``alias._cpu``).
#: "The compiled _cpu/_cuda modules are reached only through ops.py/_cuda_ops.py and the
#: step/plan objects that ops exposes." backend.py loads both to report what was built and to
#: set the CPU pool's threads; _cuda_ops receives ``ember._cuda`` from ``backend.cuda_module()``
#: (an import error that says why). train/cuda_graph.py records and replays GPU steps through
#: ``_cuda_ops.allocating_from`` (the allocator of a captured step) and ``_cuda_ops.argmax``.
RESTRICTED = {
    "ember._cpu": {"ember.ops", "ember.backend"},
    "ember._cuda": {"ember.backend", "ember._cuda_ops"},
    "ember._cuda_ops": {"ember.ops", "ember.train.cuda_graph"},
}

#: Imports allowed inside a function: optional or platform-specific dependencies, and the
#: GPU-only ember modules (their import needs, or only makes sense with, a GPU build).
LOCAL_IMPORT_OK = {"cupy", "matplotlib", "tqdm", "sklearn", "torch", "tomllib", "tomli",
                   "threadpoolctl", "safetensors", "fcntl", "tensorboardX", "onnx",
                   "onnxruntime", "mpi4py"}
LOCAL_IMPORT_OK_EMBER = {"ember._cuda_ops", "ember._cuda", "ember.train.cuda_graph"}

#: The checkpoint format knows no training classes.
CHECKPOINT_MUST_NOT_REACH = ("ember.train", "ember.trainer", "ember.callbacks", "ember.cli",
                             "ember.sklearn")

MAX_FUNCTION_LINES = 100

#: The layers, bottom to top (ARCHITECTURE.md): a module imports only its own layer or lower.
#: A name ending in ``.*`` covers a package and everything in it.
LAYERS = [
    ("bottom", ["ember.errors", "ember._version", "ember._validate", "ember._io",
                "ember.backend", "ember._cpu", "ember._cuda"]),
    ("kernel API", ["ember.ops", "ember._cuda_ops", "ember._plan_cache"]),
    ("model", ["ember.nn", "ember.losses", "ember.optim", "ember.schedules", "ember.data",
               "ember.datasets", "ember.preprocessing", "ember.metrics", "ember.distributed"]),
    ("checkpoint format", ["ember.checkpoint"]),
    ("inference", ["ember.inference"]),
    ("callbacks", ["ember.callbacks", "ember.callbacks.*"]),
    ("train", ["ember.train", "ember.train.*", "ember.trainer"]),
    ("top", ["ember.sklearn", "ember.bench", "ember.export", "ember.cli", "ember.cli.*",
             "ember.__main__", "ember.torch", "ember.torch.*", "ember"]),
]

#: csrc/cuda/<name>.cu with no csrc/cpu/<name>.cpp: the CUDA runtime's own pieces.
CUDA_ONLY = {"device": "device discovery and info (the CPU side needs none)"}
#: csrc/cpu/<name>.cpp with no csrc/cuda/<name>.cu, and why.
CPU_ONLY = {
    "dispatch": "run-time ISA choice and the thread pool (CPU runtime)",
    "gather": "on CUDA, ember/_cuda_ops.py gathers with cupy.take (see bindings/gather_args.h)",
    "mlp": "MlpPlan, the CPU fused training step (Sequential.fused_plan)",
}
#: bindings/<family>_args.h contracts used by the CPU binding only.
CPU_ONLY_CONTRACTS = {"gather"}

#: Files under python/ember that are data, not modules, and need no line in ARCHITECTURE.md.
DATA_SUFFIXES = {".npz", ".csv", ".json", ".txt", ".gz", ".zip"}


# ------------------------------------------------------------------------------------------
# reading the sources


def module_name(path: Path, pkg: Path = PKG) -> str:
    parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(pkg: Path = PKG) -> Dict[str, Path]:
    """Module name -> file, for every .py under ``pkg`` (a package wins over a same-named .py,
    as it does for Python; test_no_module_shadowed_by_a_package flags the pair)."""
    files: Dict[str, Path] = {}
    for path in sorted(pkg.rglob("*.py"), key=lambda p: (p.name != "__init__.py", str(p))):
        if "__pycache__" in path.parts:
            continue
        files.setdefault(module_name(path, pkg), path)
    return files


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


class Import:
    """One ember module an import statement reaches."""

    def __init__(self, target: str, line: int, local: bool, type_only: bool, names: tuple,
                 implicit: bool = False):
        self.target = target          # the module
        self.line = line
        self.local = local            # inside a function
        self.type_only = type_only    # under `if TYPE_CHECKING:`
        self.names = names            # for `from M import a, b`: the names (else ())
        self.implicit = implicit      # a parent package run before `target`


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, local: bool = False, type_only: bool = False):
    """Every node below ``node`` with (inside a function?, under TYPE_CHECKING?)."""
    for child in ast.iter_child_nodes(node):
        child_local = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                  ast.Lambda))
        if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
            yield child, local, True
            yield from _walk(child, child_local, True)
        else:
            yield child, local, type_only
            yield from _walk(child, child_local, type_only)


class Source:
    """A module's source: its imports (ember and others) and its aliases of ember modules."""

    def __init__(self, name: str, text: str, modules: Set[str], is_package: bool,
                 path: str = "<string>"):
        self.name = name
        self.path = path
        self.tree = ast.parse(text, filename=path)
        self.modules = modules | COMPILED
        self.package = name if is_package else name.rpartition(".")[0]
        self.ember: List[Import] = []       # ember modules reached
        self.other: List[Tuple[str, int, bool]] = []  # (top-level name, line, local)
        self.unresolved: List[Tuple[str, int]] = []
        self.private: List[Tuple[int, str]] = []  # (line, what)
        self.aliases: Dict[str, str] = {}   # local name -> ember module
        self.guarded: Set[int] = set()      # lines inside `try: ... except ImportError:`
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
                for stmt in node.body:
                    self.guarded.update(range(stmt.lineno, stmt.end_lineno + 1))
        for node, local, type_only in _walk(self.tree):
            if isinstance(node, ast.Import):
                self._import(node, local, type_only)
            elif isinstance(node, ast.ImportFrom):
                self._import_from(node, local, type_only)
        self._attributes()

    # -- imports

    def _reach(self, target: str, line: int, local: bool, type_only: bool,
               names: tuple = ()) -> None:
        if target not in self.modules:
            self.unresolved.append((target, line))
        self.ember.append(Import(target, line, local, type_only, names))
        parts = target.split(".")
        for i in range(2, len(parts)):  # parent packages run first (not the root, not our own)
            parent = ".".join(parts[:i])
            if not (self.package == parent or self.package.startswith(parent + ".")):
                self.ember.append(Import(parent, line, local, type_only, (), implicit=True))

    def _import(self, node: ast.Import, local: bool, type_only: bool) -> None:
        for a in node.names:
            top = a.name.split(".")[0]
            if top != "ember":
                self.other.append((top, node.lineno, local))
                continue
            self._reach(a.name, node.lineno, local, type_only)
            if a.asname:
                self.aliases[a.asname] = a.name
            else:
                self.aliases["ember"] = "ember"

    def _base(self, node: ast.ImportFrom) -> Optional[str]:
        if node.level == 0:
            return node.module
        base = self.package.split(".")
        if node.level > 1:
            base = base[:len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def _import_from(self, node: ast.ImportFrom, local: bool, type_only: bool) -> None:
        base = self._base(node)
        if base == "__future__" or base is None:
            return
        if base.split(".")[0] != "ember":
            self.other.append((base.split(".")[0], node.lineno, local))
            return
        plain = []
        for a in node.names:
            sub = f"{base}.{a.name}"
            if sub in self.modules:  # a submodule: `from ember import nn`, `from . import steps`
                self._reach(sub, node.lineno, local, type_only)
                self.aliases[a.asname or a.name] = sub
            else:
                plain.append(a.name)
                if _private(a.name):
                    self.private.append((node.lineno, f"from {base} import {a.name}"))
        if plain:
            self._reach(base, node.lineno, local, type_only, tuple(plain))

    # -- attribute access on ember module aliases

    def _attributes(self) -> None:
        inner = {id(n.value) for n in ast.walk(self.tree) if isinstance(n, ast.Attribute)}
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Attribute) or id(node) in inner:
                continue  # the whole chain a.b.c, once
            chain = []
            cur: ast.expr = node
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if not isinstance(cur, ast.Name) or cur.id not in self.aliases:
                continue
            module = self.aliases[cur.id]
            for attr in reversed(chain):
                sub = f"{module}.{attr}"
                if sub in self.modules:  # a submodule (ember._io through `import ember`)
                    if sub in RESTRICTED:
                        self.ember.append(Import(sub, node.lineno, False, False, ()))
                    module = sub
                    continue
                if _private(attr):
                    self.private.append((node.lineno, f"{cur.id}.{'.'.join(reversed(chain))}"
                                         f" ({module}.{attr} is private to {module})"))
                break


def defined_names(tree: ast.Module) -> Optional[Set[str]]:
    """The names a module binds at its top level (None: it cannot be told -- a star import or
    a module ``__getattr__``)."""
    names: Set[str] = set()

    def visit(body) -> bool:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
                if node.name == "__getattr__":
                    return False
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    if a.name == "*":
                        return False
                    names.add(a.asname or a.name.split(".")[0])
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
            for field in ("body", "orelse", "finalbody", "handlers"):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    sub = getattr(node, field, None)
                    if isinstance(sub, list) and not visit(sub):
                        return False
        return True

    return names if visit(tree.body) else None


def check_names(sources: Dict[str, "Source"]) -> None:
    """Record in ``unresolved`` each ``from ember.m import x`` whose ``x`` is neither a
    submodule nor a name ``ember.m`` binds (a module that moved, a name that was renamed)."""
    bound = {name: defined_names(src.tree) for name, src in sources.items()}
    for src in sources.values():
        for imp in src.ember:
            known = bound.get(imp.target)
            for n in imp.names:
                if known is not None and n not in known:
                    src.unresolved.append((f"{imp.target}.{n}", imp.line))


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError",
                                                    "Exception", "BaseException") for t in types)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def read_package(pkg: Path = PKG) -> Dict[str, Source]:
    files = source_files(pkg)
    names = set(files)
    sources = {name: Source(name, path.read_text(), names, path.name == "__init__.py",
                            rel(path) if pkg == PKG else str(path))
               for name, path in files.items()}
    check_names(sources)
    return sources


@pytest.fixture(scope="module")
def sources() -> Dict[str, Source]:
    if not PKG.is_dir():
        pytest.fail(f"no package at {PKG}")
    return read_package()


# ------------------------------------------------------------------------------------------
# the graph


def graph(sources: Dict[str, Source]) -> Dict[str, Dict[str, Tuple[str, int]]]:
    """module -> {imported module: (file, line) of the first import}; TYPE_CHECKING excluded."""
    g: Dict[str, Dict[str, Tuple[str, int]]] = {name: {} for name in sources}
    for name, src in sources.items():
        for imp in src.ember:
            if imp.type_only:
                continue
            g[name].setdefault(imp.target, (src.path, imp.line))
            g.setdefault(imp.target, {})
    return g


def strongly_connected(g: Dict[str, Iterable[str]]) -> List[List[str]]:
    """Tarjan's algorithm (iterative): the components, each a list of modules."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    on_stack: Set[str] = set()
    stack: List[str] = []
    out: List[List[str]] = []
    counter = 0
    for root in sorted(g):
        if root in index:
            continue
        work = [(root, iter(sorted(g.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(g.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(sorted(comp))
    return out


def find_cycles(g: Dict[str, Iterable[str]]) -> List[List[str]]:
    """One cycle through each strongly connected component that has one: [a, b, ..., a]."""
    cycles = []
    for comp in strongly_connected(g):
        members = set(comp)
        start = comp[0]
        if len(comp) == 1 and start not in g.get(start, ()):
            continue
        # shortest path start -> ... -> start inside the component (BFS)
        prev: Dict[str, str] = {}
        frontier = [start]
        found = False
        while frontier and not found:
            nxt = []
            for v in frontier:
                for w in sorted(g.get(v, ())):
                    if w not in members:
                        continue
                    if w == start:
                        prev[start] = v
                        found = True
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found:
                    break
            frontier = nxt
        path = [start]
        v = prev[start]
        while v != start:
            path.append(v)
            v = prev[v]
        path.append(start)
        cycles.append(list(reversed(path)))
    return cycles


def layer_of(module: str) -> Optional[int]:
    best = None
    for i, (_, members) in enumerate(LAYERS):
        for m in members:
            if m == module or (m.endswith(".*") and module.startswith(m[:-1])):
                best = i
    return best


# ------------------------------------------------------------------------------------------
# self-checks: the detectors find what they are meant to find


def test_cycle_finder_finds_a_synthetic_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"a"}}
    cycles = find_cycles(g)
    assert sorted(tuple(c) for c in cycles) == [("a", "b", "c", "a"), ("e", "e")]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_import_reader_on_synthetic_sources(tmp_path):
    pkg = tmp_path / "ember"
    (pkg / "train").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from ember import nn\nfrom ember.train import Trainer\n")
    (pkg / "nn.py").write_text("")
    (pkg / "ops.py").write_text("from ember import _cpu\n")
    (pkg / "train" / "__init__.py").write_text("from .trainer import Trainer\n")
    (pkg / "train" / "trainer.py").write_text(
        "from . import steps\nfrom .. import nn\nfrom ember.nn import _hidden, Linear\n"
        "def f():\n    import json\n    from ember.train import cuda_graph\n"
        "    return nn._state, nn.Linear\n")
    (pkg / "train" / "steps.py").write_text("import ember.ops as ops\nx = ops._cpu.gemm\n"
                                            "from ember.train import trainer\n")
    (pkg / "train" / "cuda_graph.py").write_text("")
    s = read_package(pkg)
    trainer = s["ember.train.trainer"]
    assert {i.target for i in trainer.ember} == {"ember.train.steps", "ember.nn",
                                                 "ember.train.cuda_graph"}
    assert ("json", 5, True) in trainer.other
    assert [i.target for i in trainer.ember if i.local] == ["ember.train.cuda_graph"]
    assert [what.split(" ")[0] for _, what in sorted(trainer.private)] == ["from", "nn._state"]
    steps = s["ember.train.steps"]
    assert {i.target for i in steps.ember} == {"ember.ops", "ember.train.trainer"}
    assert [what.split(" ")[0] for _, what in steps.private] == ["ops._cpu.gemm"]
    ops = s["ember.ops"]
    assert ops.guarded == set() and [i.target for i in ops.ember] == ["ember._cpu"]
    assert trainer.unresolved == [("ember.nn._hidden", 3), ("ember.nn.Linear", 3)]
    assert find_cycles(graph(s)) == [["ember.train.steps", "ember.train.trainer",
                                      "ember.train.steps"]]
    # a submodule importing the package root closes a cycle through ember/__init__
    (pkg / "nn.py").write_text("from ember import __version__\n")
    assert ["ember", "ember.nn", "ember"] in find_cycles(graph(read_package(pkg)))
    # importing a module of another package runs that package's __init__ first
    (pkg / "callbacks").mkdir()
    (pkg / "callbacks" / "__init__.py").write_text("")
    (pkg / "callbacks" / "base.py").write_text("")
    (pkg / "ops.py").write_text("from ember.callbacks.base import x\n")
    assert {i.target for i in read_package(pkg)["ember.ops"].ember} == {
        "ember.callbacks", "ember.callbacks.base"}


# ------------------------------------------------------------------------------------------
# the package's layout


def test_packages_have_an_init():
    """A folder of modules without __init__.py is a namespace package by accident."""
    bad = sorted(rel(d) for d in PKG.rglob("*") if d.is_dir() and d.name != "__pycache__"
                 and any(d.glob("*.py")) and not (d / "__init__.py").exists())
    assert not bad, f"folders of modules with no __init__.py: {bad}; add one (with a docstring)"


def test_no_module_shadowed_by_a_package():
    """``x.py`` beside a package ``x/``: Python imports the package, the file is dead code."""
    bad = sorted(rel(p) for p in PKG.rglob("*.py")
                 if (p.with_suffix("") / "__init__.py").exists())
    assert not bad, f"modules shadowed by a package of the same name: {bad}; remove them"


def test_every_ember_import_names_a_module(sources):
    bad = [f"{src.path}:{line}: imports {target}, which is neither a module under python/ember "
           f"nor a name its module defines" for src in sources.values()
           for target, line in sorted(set(src.unresolved), key=lambda u: u[1])]
    assert not bad, "imports of what is not there (moved or renamed?):\n" + "\n".join(bad)


def test_no_import_cycle(sources):
    g = graph(sources)
    cycles = find_cycles(g)
    text = []
    components = {c[0]: c for c in strongly_connected(g)}
    for cycle in cycles:
        steps = [f"  {a} -> {b}   ({g[a][b][0]}:{g[a][b][1]})" for a, b in zip(cycle, cycle[1:])]
        others = [m for m in next(c for c in components.values() if cycle[0] in c)
                  if m not in cycle]
        also = f"\n  (the same knot also holds: {', '.join(others)})" if others else ""
        text.append(" -> ".join(cycle) + "\n" + "\n".join(steps) + also)
    assert not cycles, ("import cycles (imports inside functions count; a submodule must not "
                        "import the ember root, take __version__ from ember._version):\n" +
                        "\n".join(text))


def test_imports_go_down_the_layers(sources):
    """A module imports its own layer or the ones below it (the order of ARCHITECTURE.md)."""
    bad = []
    for name, src in sorted(sources.items()):
        mine = layer_of(name)
        if mine is None:
            bad.append(f"{src.path}: {name} is in no layer: add it to LAYERS here and to "
                       f"ARCHITECTURE.md")
            continue
        for imp in src.ember:
            theirs = layer_of(imp.target)
            if theirs is not None and theirs > mine:
                how = "the parent package of what it imports, " if imp.implicit else ""
                bad.append(f"{src.path}:{imp.line}: {name} ({LAYERS[mine][0]}) imports "
                           f"{how}{imp.target} ({LAYERS[theirs][0]}), a higher layer")
    assert not bad, "\n".join(bad)


def test_imports_inside_functions_are_optional_dependencies_only(sources):
    bad = []
    for src in sources.values():
        for top, line, local in src.other:
            if local and top not in LOCAL_IMPORT_OK:
                bad.append(f"{src.path}:{line}: imports {top} inside a function")
        for imp in src.ember:
            if imp.local and not imp.implicit and imp.target not in LOCAL_IMPORT_OK_EMBER:
                bad.append(f"{src.path}:{imp.line}: imports {imp.target} inside a function")
    assert not bad, ("imports inside functions are for optional dependencies only "
                     f"({', '.join(sorted(LOCAL_IMPORT_OK | LOCAL_IMPORT_OK_EMBER))}); move "
                     "these to the top of the module (a cycle they hid means a name is in the "
                     "wrong layer):\n" + "\n".join(sorted(bad)))


def test_gpu_only_modules_are_imported_lazily(sources):
    """``ember._cuda_ops`` raises ImportError when ember was built without CUDA (and
    ``ember._cuda`` is then missing), so ``import ember`` must not depend on them: outside the
    GPU-only modules themselves, they are imported inside a function or under ``try: ...
    except ImportError`` (as ops.py does). That holds for ``ember.train.cuda_graph`` too: its
    GPU-free parts (the recording allocator) are tested on builds without CUDA."""
    bad = []
    for name, src in sorted(sources.items()):
        if name in ("ember._cuda_ops", "ember._cuda"):
            continue
        for imp in src.ember:
            if (imp.target in LOCAL_IMPORT_OK_EMBER and not imp.local and not imp.type_only
                    and not imp.implicit and imp.line not in src.guarded):
                bad.append(f"{src.path}:{imp.line}: imports {imp.target} at module level; "
                           f"import it inside the function that needs it (GPU only), or under "
                           f"try/except ImportError")
    assert not bad, "\n".join(bad)


def test_no_private_names_across_modules(sources):
    bad = [f"{src.path}:{line}: {what}" for src in sources.values() for line, what in src.private]
    assert not bad, ("private names used from another ember module: make the name public in "
                     "its module (and document it) or move the code that needs it there:\n" +
                     "\n".join(sorted(bad)))


def test_compiled_modules_only_through_ops(sources):
    bad = []
    for name, src in sources.items():
        for imp in src.ember:
            allowed = RESTRICTED.get(imp.target)
            if allowed is not None and name not in allowed and name != imp.target:
                bad.append(f"{src.path}:{imp.line}: {name} reaches {imp.target} (allowed only "
                           f"in {', '.join(sorted(allowed))}); call ember.ops instead")
    assert not bad, "\n".join(sorted(set(bad)))


def test_checkpoint_format_knows_no_training_classes(sources):
    """ember/checkpoint.py is the file format: it reaches nothing in the training layers, not
    directly, not through what it imports (TYPE_CHECKING imports included)."""
    name = "ember.checkpoint"
    assert name in sources, "python/ember/checkpoint.py is missing"
    forbidden = lambda m: any(m == f or m.startswith(f + ".") for f in CHECKPOINT_MUST_NOT_REACH)
    bad = [f"{sources[name].path}:{imp.line}: imports {imp.target}"
           for imp in sources[name].ember if forbidden(imp.target)]
    g = graph(sources)
    prev = {name: None}
    queue = [name]
    while queue:
        v = queue.pop(0)
        for w in sorted(g.get(v, ())):
            if w not in prev:
                prev[w] = v
                queue.append(w)
    for m in sorted(m for m in prev if forbidden(m)):
        path = [m]
        while prev[path[-1]] is not None:
            path.append(prev[path[-1]])
        path.reverse()
        if len(path) > 2 and not forbidden(path[1]):  # (direct imports are reported above)
            bad.append("reaches " + " -> ".join(path))
    assert not bad, ("ember.checkpoint must not import ember.train / trainer / callbacks / cli "
                     "/ sklearn (the trainer hands it state_dict(); callbacks call it):\n" +
                     "\n".join(bad))


def test_functions_are_at_most_100_lines(sources):
    bad = []
    for src in sources.values():
        for node in ast.walk(src.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    bad.append((n, f"{src.path}:{node.lineno}: {node.name} is {n} lines"))
    assert not bad, (f"functions over {MAX_FUNCTION_LINES} lines; split them into named steps:\n"
                     + "\n".join(t for _, t in sorted(bad, reverse=True)))


# ------------------------------------------------------------------------------------------
# csrc: the same family names on both sides


def _stems(folder: Path, suffix: str, prefix: str = "") -> Set[str]:
    return {p.name[len(prefix):-len(suffix)] for p in folder.glob(f"{prefix}*{suffix}")}


def test_every_cuda_family_has_a_cpu_family():
    cuda, cpu = _stems(CSRC / "cuda", ".cu"), _stems(CSRC / "cpu", ".cpp")
    missing = sorted(cuda - cpu - set(CUDA_ONLY))
    assert not missing, (f"csrc/cuda/<name>.cu with no csrc/cpu/<name>.cpp: {missing}; name the "
                         "family the same on both sides or list it in CUDA_ONLY with why")
    stale = sorted(set(CUDA_ONLY) - (cuda - cpu)) + sorted(set(CPU_ONLY) - (cpu - cuda))
    assert not stale, (f"CUDA_ONLY / CPU_ONLY list {stale}, which is gone or now on both sides; "
                       "update the lists")
    cpu_only = sorted(cpu - cuda - set(CPU_ONLY))
    assert not cpu_only, (f"csrc/cpu/<name>.cpp with no csrc/cuda/<name>.cu: {cpu_only}; add the "
                          "CUDA family or list it in CPU_ONLY with why")


def test_every_cuda_binding_has_a_cpu_binding():
    b = CSRC / "bindings"
    cuda, cpu = _stems(b, ".cpp", "cuda_"), _stems(b, ".cpp", "cpu_")
    missing = sorted(cuda - cpu)
    assert not missing, (f"csrc/bindings/cuda_<family>.cpp with no cpu_<family>.cpp: {missing}")


def test_family_contracts_are_used_by_both_bindings():
    """bindings/<family>_args.h states the checks of a family once; both bindings include it."""
    b = CSRC / "bindings"
    bad = []
    for header in sorted(b.glob("*_args.h")):
        family = header.name[:-len("_args.h")]
        sides = ["cpu"] if family in CPU_ONLY_CONTRACTS else ["cpu", "cuda"]
        for side in sides:
            binding = b / f"{side}_{family}.cpp"
            if not binding.exists():
                bad.append(f"{rel(header)}: no {rel(binding)}")
            elif f'#include "{header.name}"' not in binding.read_text():
                bad.append(f"{rel(binding)} does not include {header.name}")
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------------------------
# ARCHITECTURE.md names every file, and no file that is gone

# a path: letters, digits, _ . / -, ending in a source suffix (not the tail of `<family>_args.h`)
_PATH_TOKEN = re.compile(r"(?<![<>\w./-])[A-Za-z0-9_./-]+\.(?:py|cpp|cu|cuh|h|inc)\b")


def _doc_paths() -> Set[str]:
    if not ARCH.exists():
        pytest.fail("ARCHITECTURE.md is missing at the repository root")
    found = set()
    for token in _PATH_TOKEN.findall(ARCH.read_text()):
        for prefix in ("python/ember/", "ember/", "csrc/"):
            if token.startswith(prefix):
                token = token[len(prefix):]
        found.add(token)
    return found


def test_architecture_names_every_file():
    named = _doc_paths()
    files = [p.relative_to(PKG) for p in PKG.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix not in DATA_SUFFIXES
             and p.suffix not in (".so", ".pyd", ".pyc")]
    files += [p.relative_to(CSRC) for p in CSRC.rglob("*") if p.is_file()]
    missing = sorted(str(p) for p in files if str(p) not in named)
    assert not missing, ("ARCHITECTURE.md does not name these files (by their path relative to "
                         "python/ember/ or csrc/); add a line saying what each is for:\n  " +
                         "\n  ".join(missing))


def test_architecture_names_no_missing_file():
    places = [PKG, CSRC, CSRC / "include", ROOT]
    stale = sorted(t for t in _doc_paths() if not any((d / t).exists() for d in places))
    assert not stale, ("ARCHITECTURE.md names files that do not exist (keep it true to the "
                       f"code): {stale}")
