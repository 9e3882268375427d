"""The runtime package stays importable and correct on Python 3.8 (JetPack 5's only Python).

JetPack 5's TensorRT bindings exist for its system Python 3.8 alone, so ``edgeseg/`` may use
nothing newer. Two checks guard what a test run on a newer interpreter cannot see:

- vermin (a maintained minimum-version detector) for 3.9+ library members and syntax, such as
  ``str.removeprefix`` or ``importlib.resources.files``;
- an AST check for type expressions that Python 3.8 *evaluates*: ``from __future__ import
  annotations`` keeps ordinary annotations as strings, but pydantic evaluates its models' field
  annotations, and aliases, casts and ``isinstance`` arguments are plain expressions. There
  ``list[int]``, ``re.Pattern[str]`` or ``int | None`` raise TypeError at import on 3.8.

The real proof is the runtime suite run under 3.8 and 3.10 by ``.ci/run`` (``make test-py38``).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[1] / "edgeseg"

#: Classes that are not subscriptable at run time before 3.9 (PEP 585).
BUILTIN_GENERICS = frozenset({"list", "dict", "tuple", "set", "frozenset", "type"})
#: Modules whose classes became subscriptable only in 3.9 (``collections.abc.Sequence[int]`` ...).
PEP585_MODULES = frozenset({"collections", "collections.abc", "re", "queue", "os", "subprocess",
                            "contextlib", "weakref", "asyncio", "concurrent.futures", "itertools", "functools"})
#: numpy's own classes (``np.dtype[Any]``, ``np.integer[Any]``) are subscriptable from 3.9 only;
#: ``numpy.typing.NDArray[...]`` works on 3.8.
NUMPY_MODULES = frozenset({"numpy"})
PYDANTIC_BASES = frozenset({"BaseModel", "RootModel"})


def _runtime_files() -> list[Path]:
    return sorted(RUNTIME.rglob("*.py"))


class _Checker(ast.NodeVisitor):
    """Finds 3.9+ type expressions that 3.8 evaluates, in one module."""

    def __init__(self, path: Path, source: str, tree: ast.Module, pydantic_classes: set[str]) -> None:
        self.path = path
        self.source = source
        #: Without ``from __future__ import annotations`` every annotation is evaluated at def time.
        self.lazy_annotations = any(
            isinstance(s, ast.ImportFrom) and s.module == "__future__" and any(a.name == "annotations" for a in s.names)
            for s in tree.body
        )
        self.pydantic = pydantic_classes
        self.from_pep585: set[str] = set()  # names imported from PEP585_MODULES
        self.module_aliases: dict[str, str] = {}  # local name -> module for `import re`, `import collections.abc as c`
        self.numpy_aliases: set[str] = set()
        self.problems: list[str] = []
        self._in_model = 0

    def _say(self, node: ast.AST, what: str) -> None:
        rel = self.path.relative_to(RUNTIME.parent)
        text = ast.get_source_segment(self.source, node) or ""  # ast.unparse is 3.9+
        self.problems.append(f"{rel}:{getattr(node, 'lineno', 0)}: {what} ({text[:60]})")

    # -- imports -------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name in NUMPY_MODULES:
                self.numpy_aliases.add(a.asname or a.name)
            if a.name in PEP585_MODULES:
                self.module_aliases[a.asname or a.name.split(".")[0]] = a.asname and a.name or a.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module in PEP585_MODULES:
            self.from_pep585.update(a.asname or a.name for a in node.names)

    # -- what is a 3.9+ type expression ------------------------------------------------------
    def _generic_base(self, value: ast.expr) -> bool:
        if isinstance(value, ast.Name):
            return value.id in BUILTIN_GENERICS or (value.id in self.from_pep585 and value.id[:1].isupper())
        if isinstance(value, ast.Attribute):
            root = value
            while isinstance(root, ast.Attribute):
                root = root.value  # type: ignore[assignment]
            if not isinstance(root, ast.Name):
                return False
            if root.id in self.numpy_aliases:
                return True
            return root.id in self.module_aliases and value.attr[:1].isupper()  # re.Pattern, not os.environ
        return False

    def _new_syntax(self, expr: ast.expr) -> Iterator[ast.AST]:
        """Subexpressions of ``expr`` that need 3.9/3.10 when evaluated."""
        for node in ast.walk(expr):
            if isinstance(node, ast.Subscript) and self._generic_base(node.value):
                yield node
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and self._is_type_union(node):
                yield node

    def _is_type_union(self, node: ast.BinOp) -> bool:
        sides = (node.left, node.right)
        if any(isinstance(s, ast.Constant) and s.value is None for s in sides):
            return True
        return all(isinstance(s, ast.Name) and s.id in BUILTIN_GENERICS | {"int", "float", "str", "bytes", "bool"}
                   for s in sides)

    # -- where expressions are evaluated -----------------------------------------------------
    def _runtime(self, expr: ast.expr | None) -> None:
        if expr is None:
            return
        for node in self._new_syntax(expr):
            self._say(node, "3.9+ type expression evaluated at run time")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            self._runtime(base)
        for d in node.decorator_list:
            self.visit(d)
        is_model = node.name in self.pydantic
        self._in_model += is_model
        for stmt in node.body:
            self.visit(stmt)
        self._in_model -= is_model

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if not self.lazy_annotations:
            self._runtime(node.annotation)
        elif self._in_model:
            for bad in self._new_syntax(node.annotation):
                self._say(bad, "3.9+ type in a pydantic field annotation (pydantic evaluates it)")
        if node.value is not None:
            self.visit(node.value)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for d in node.decorator_list:
            self.visit(d)
        for default in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
            self.visit(default)
        if not self.lazy_annotations:
            args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg, node.args.kwarg]
            for a in args:
                self._runtime(a.annotation if a is not None else None)
            self._runtime(node.returns)
        for stmt in node.body:
            self.visit(stmt)

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function

    def visit_arg(self, node: ast.arg) -> None:  # annotations of lambdas cannot exist; skip
        return

    def generic_visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.expr):
            problems = list(self._new_syntax(node))
            for p in problems:
                self._say(p, "3.9+ type expression evaluated at run time")
            if problems:
                return
        super().generic_visit(node)


def _pydantic_classes(trees: list[ast.Module]) -> set[str]:
    """Names of every class in the package that derives (transitively) from a pydantic model."""
    bases: dict[str, set[str]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                names = {b.id if isinstance(b, ast.Name) else b.attr for b in node.bases
                         if isinstance(b, (ast.Name, ast.Attribute))}
                bases.setdefault(node.name, set()).update(names)
    models = set(PYDANTIC_BASES)
    changed = True
    while changed:
        changed = False
        for name, parents in bases.items():
            if name not in models and parents & models:
                models.add(name)
                changed = True
    return models


def _problems() -> list[str]:
    sources = [(p, p.read_text(encoding="utf-8")) for p in _runtime_files()]
    trees = [(p, s, ast.parse(s, str(p))) for p, s in sources]
    models = _pydantic_classes([t for _, _, t in trees])
    problems: list[str] = []
    for path, source, tree in trees:
        checker = _Checker(path, source, tree, models)
        checker.visit(tree)
        problems += checker.problems
    return problems


def test_no_type_expressions_that_python38_cannot_evaluate() -> None:
    problems = _problems()
    assert not problems, "Python 3.8 (JetPack 5) would fail on:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("Shape = tuple[int, ...]", True),
        ("x = cast(list[int], y)", True),
        ("ok = isinstance(v, int | None)", True),
        ("from collections.abc import Sequence\nT = Sequence[int]", True),
        ("import re\nP = re.Pattern[str]", True),
        ("from pydantic import BaseModel\nclass M(BaseModel):\n    a: list[int]", True),
        ("from pydantic import BaseModel\nclass B(BaseModel): pass\nclass M(B):\n    a: int | None = None", True),
        ("def f(a: list[int]) -> dict[str, int | None]:\n    return {}", False),  # strings under __future__
        ("from dataclasses import dataclass\n@dataclass\nclass D:\n    a: list[int]", False),
        ("from typing import List, Optional\nT = Optional[List[int]]", False),
        ("flags = a | b", False),
        ("import os\nhome = os.environ['HOME']", False),
        ("import numpy as np\nD = np.dtype[np.float32]", True),
        ("import numpy.typing as npt\nA = npt.NDArray[np.float32]", False),
    ],
    ids=lambda v: v if isinstance(v, bool) else v.splitlines()[-1][:40],
)
def test_checker_finds_what_it_should(tmp_path: Path, source: str, found: bool) -> None:
    source = "from __future__ import annotations\n" + source
    tree = ast.parse(source)
    checker = _Checker(RUNTIME / "probe.py", source, tree, _pydantic_classes([tree]))
    checker.visit(tree)
    assert bool(checker.problems) is found, checker.problems


def test_no_library_members_or_syntax_newer_than_python38() -> None:
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent))
    if vermin is None:
        pytest.skip("vermin is not installed (pip install -e '.[dev]')")
    done = subprocess.run(
        [vermin, "--target=3.8-", "--violations", "--no-tips", "--no-parse-comments", str(RUNTIME)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
