"""No write-only fields: every dataclass field and every ``self.x`` attribute batchrun writes
is read somewhere (by batchrun, its tests or its benchmarks), or it is dead weight that each
reader of the class has to understand for nothing.

The check is by name, so it is generous: a field counts as read when any attribute of that
name is read anywhere (``x.name``, ``getattr(x, "name")``, a ``case C(name=...)`` pattern).
It catches the fields whose names nothing reads at all. The public surface (the errors,
``batchrun.types`` and whatever ``batchrun`` exports) is left out: users read it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "batchrun"
READERS = (PACKAGE, ROOT / "tests", ROOT / "bench")
PUBLIC_MODULES = {"errors.py", "types.py"}


def _trees(folder: Path) -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(folder.rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield path, ast.parse(path.read_text(), filename=str(path))


def _names_read(tree: ast.AST) -> set[str]:
    read = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Load, ast.Del)):
            read.add(node.attr)
        elif isinstance(node, ast.MatchClass):
            read.update(node.kwd_attrs)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            read.add(node.value)  # getattr(x, "name"), operator.attrgetter("name")
    return read


def _exported() -> set[str]:
    """The class names in ``batchrun.__all__`` (the public API's types)."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
            and isinstance(node.value, (ast.List, ast.Tuple))
        ):
            return {
                e.value
                for e in node.value.elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)
            }
    return set()


def _is_dataclass(node: ast.ClassDef) -> bool:
    return any("dataclass" in ast.unparse(decorator) for decorator in node.decorator_list)


def _fields_written(path: Path, tree: ast.Module) -> Iterator[tuple[str, str]]:
    """(where, name) of each dataclass field and each ``self.name = ...`` of a class."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        where = f"{path.relative_to(ROOT)}:{node.name}"
        if _is_dataclass(node):
            for statement in node.body:
                target = statement.target if isinstance(statement, ast.AnnAssign) else None
                if isinstance(target, ast.Name) and not target.id.startswith("_"):
                    yield where, target.id
        for inner in ast.walk(node):
            if (
                isinstance(inner, ast.Attribute)
                and isinstance(inner.ctx, ast.Store)
                and isinstance(inner.value, ast.Name)
                and inner.value.id == "self"
            ):
                yield where, inner.attr


def test_no_field_is_written_and_never_read() -> None:
    read: set[str] = set()
    for folder in READERS:
        for _, tree in _trees(folder):
            read |= _names_read(tree)
    public = _exported()
    write_only = set()
    for path, tree in _trees(PACKAGE):
        if path.name in PUBLIC_MODULES and path.parent == PACKAGE:
            continue
        for where, name in _fields_written(path, tree):
            if name not in read and where.rpartition(":")[2] not in public:
                write_only.add(f"{where}.{name}")

    assert not write_only, "written, never read (remove it, or read it):\n" + "\n".join(
        sorted(write_only)
    )
