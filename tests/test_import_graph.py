# Copyright (c) lt_d2 contributors.
"""lt_d2's modules form a layering: no import cycle, and each module imports on its own."""
import ast
import pathlib
import subprocess
import sys

from .conftest import REPO

PACKAGE_ROOT = pathlib.Path(REPO) / "lt_d2"


def _module_name(path):
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lt_d2_modules():
    """{module name: source path} of every module of lt_d2."""
    return {_module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def imported_modules(path, name, known):
    """lt_d2 modules that module ``name`` (at ``path``) imports, at any depth of its code
    (functions included), relative imports resolved. ``from X import y`` counts as an import
    of ``X.y`` when that is a module, else of ``X``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def find_cycle(graph):
    """One cycle of ``graph`` ({node: set of nodes}) as a list of nodes, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def import_graph():
    modules = lt_d2_modules()
    return {name: imported_modules(path, name, modules) for name, path in modules.items()}


def test_import_graph_is_acyclic():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..b import g\n")
    (pkg / "b.py").write_text("from .sub import a\nimport pkg.sub\n")
    known = {"pkg", "pkg.sub", "pkg.sub.a", "pkg.b"}
    assert imported_modules(pkg / "sub" / "a.py", "pkg.sub.a", known) == {"pkg.b"}
    assert imported_modules(pkg / "b.py", "pkg.b", known) == {"pkg.sub.a", "pkg.sub"}
    graph = {"pkg": set(), "pkg.sub": {"pkg.sub.a"}, "pkg.sub.a": {"pkg.b"},
             "pkg.b": {"pkg.sub.a", "pkg.sub"}}
    assert find_cycle(graph) == ["pkg.b", "pkg.sub", "pkg.sub.a", "pkg.b"]
    graph["pkg.sub.a"] = set()
    assert find_cycle(graph) is None


ISOLATED_IMPORTS = """
import gc, importlib, sys, traceback
import lt_d2  # once, so that detectron2 is imported after the compat patches and stays loaded
from fvcore.common.registry import Registry
registries = [o for o in gc.get_objects() if isinstance(o, Registry)]
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "lt_d2" or m.startswith("lt_d2.")]:
        del sys.modules[loaded]
    for registry in registries:  # what lt_d2 registered is registered again by the import
        for key, obj in list(registry._obj_map.items()):
            if getattr(obj, "__module__", "").startswith("lt_d2"):
                del registry._obj_map[key]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\\n" + traceback.format_exc(limit=-4))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_on_its_own():
    """Each module, imported first in a process, imports: no module depends on another having
    been imported before it."""
    proc = subprocess.run([sys.executable, "-c", ISOLATED_IMPORTS, *sorted(lt_d2_modules())],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


def test_every_tool_imports():
    """tools/*.py are thin CLIs over the library: each one's imports resolve (a moved name would
    otherwise surface only when a user runs that tool)."""
    tools = sorted((pathlib.Path(REPO) / "tools").glob("*.py"))
    script = (
        "import importlib.util, sys, traceback\n"
        "failed = []\n"
        "for path in sys.argv[1:]:\n"
        "    name = 'tool_' + path.split('/')[-1][:-3]\n"
        "    spec = importlib.util.spec_from_file_location(name, path)\n"
        "    try:\n"
        "        spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "    except Exception:\n"
        "        failed.append(path + ': ' + traceback.format_exc(limit=1).splitlines()[-1])\n"
        "print('\\n'.join(failed))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, *map(str, tools)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", proc.stdout


def test_tools_import_lt_d2_before_detectron2():
    """lt_d2's compatibility fixes must run before detectron2.data is imported (detectron2 0.6
    reads PIL names at import time): every tool imports lt_d2 before any detectron2 module."""
    late = []
    for path in sorted((pathlib.Path(REPO) / "tools").glob("*.py")):
        order = [alias.name if isinstance(node, ast.Import) else node.module or ""
                 for node in ast.parse(path.read_text()).body
                 if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in (node.names if isinstance(node, ast.Import) else [None])]
        first_d2 = next((i for i, m in enumerate(order) if m.split(".")[0] == "detectron2"), None)
        first_lt = next((i for i, m in enumerate(order) if m.split(".")[0] == "lt_d2"), None)
        if first_d2 is not None and (first_lt is None or first_lt > first_d2):
            late.append(path.name)
    assert not late, f"import lt_d2 first (then `# isort: split`) in: {late}"
