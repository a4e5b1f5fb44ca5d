"""The package's import graph: no module of memae_fused imports, directly or through others, a
module that imports it back (function-level imports included: a lazy import only hides a
cycle), the op never imports the application, python_ref imports nothing from memae_fused,
and every module imports."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_names(package: str):
    """{module name: source path} for every .py file of a top-level package."""
    names = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _is_type_checking(node) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def bound_names(path: Path):
    """The names a module's top level defines or imports."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def imported_modules(name: str, path: Path, known):
    """The modules in `known` that the source of module `name` imports anywhere in it.
    `from pkg import x` imports the module pkg.x where there is one; where pkg's __init__ does
    not define x either, x is a compiled submodule (memae_fused._C), outside the graph."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def visit(node):
        if _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in known:
                    found.add(submodule)
                elif base in known and (not known[base].name == "__init__.py"
                                        or alias.name in bound_names(known[base])):
                    found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return {m for m in found if m in known and m != name}


def import_graph(package: str):
    known = module_names(package)
    return {name: imported_modules(name, path, known) for name, path in known.items()}


def find_cycle(graph):
    """One cycle as a list of modules [a, b, ..., a], or None."""
    state, stack = {}, []

    def dfs(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = dfs(node)
            if cycle:
                return cycle
    return None


def test_cycle_finder_sees_direct_and_lazy_cycles(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    # Imports inside functions and relative imports count.
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "one.py").write_text("from pkg import two\n")
    (pkg / "two.py").write_text("def f():\n    from . import one\n    from pkg import _C\n")
    known = {"pkg": pkg / "__init__.py", "pkg.one": pkg / "one.py", "pkg.two": pkg / "two.py"}
    graph = {name: imported_modules(name, path, known) for name, path in known.items()}
    assert graph == {"pkg": set(), "pkg.one": {"pkg.two"}, "pkg.two": {"pkg.one"}}
    assert find_cycle(graph) == ["pkg.one", "pkg.two", "pkg.one"]


def test_memae_fused_has_no_import_cycles():
    graph = import_graph("memae_fused")
    assert {"memae_fused.ops", "memae_fused.backends.triton",
            "memae_fused.anomaly.cli"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_op_core_does_not_import_the_application():
    for name, imported in import_graph("memae_fused").items():
        if not name.startswith("memae_fused.anomaly"):
            assert not {m for m in imported if m.startswith("memae_fused.anomaly")}, name


def test_python_ref_imports_nothing_from_memae_fused():
    for path in sorted((ROOT / "python_ref").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "memae_fused" for n in names), path


def test_every_module_imports():
    """In a fresh interpreter, so that the modules' own imports are what makes them load."""
    modules = sorted(module_names("memae_fused"))
    code = "import importlib\nfor m in %r:\n    importlib.import_module(m)\n" % modules
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
