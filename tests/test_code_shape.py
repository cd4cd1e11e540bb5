"""The shape the style guide asks of lt_d2's code: short functions and modules (a newcomer reads
one screen per function), so that a long one is a decision, listed here with its reason."""
import ast
import pathlib

from .conftest import REPO

MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 330  # "under ~300": config.py and the fast LVIS evaluation's parts sit near it
LONGER_ON_PURPOSE = {}  # "path:function": reason


def _sources():
    root = pathlib.Path(REPO)
    return sorted((root / "lt_d2").rglob("*.py")) + sorted((root / "tools").glob("*.py"))


def test_functions_are_short():
    long_ones = []
    for path in _sources():
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and f"{rel}:{node.name}" not in LONGER_ON_PURPOSE:
                    long_ones.append(f"{rel}:{node.name} has {lines} lines")
    assert not long_ones, "split them, or list them with a reason:\n" + "\n".join(long_ones)


def test_modules_are_short():
    long_ones = [f"{p.relative_to(REPO)}: {n} lines" for p in _sources()
                 if (n := p.read_text().count("\n")) > MAX_MODULE_LINES]
    assert not long_ones, "split by concern:\n" + "\n".join(long_ones)
