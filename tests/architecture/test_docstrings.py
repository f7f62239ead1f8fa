"""Docstrings and docs that stay true: every module is named in its package's docstring, and
every cross-reference in a docstring or a docs page names something that exists.

References are resolved the way Sphinx's Python domain would: a ``:class:`Foo``` in a
docstring is looked up in the enclosing class, then the module's own scope (what it defines
or imports, ``TYPE_CHECKING`` imports included), then its package, then as an absolute
name; ``~`` and a leading ``.`` are dropped, ``title <target>`` reads the target. Names are
found by reading the source with :mod:`ast`; a name the source cannot show (a module's
``__getattr__``, an inherited attribute of a class from outside batchrun) is looked up by
importing. In docs/*.md, every ``batchrun.x.y`` path, every code span ``x.y`` whose first part
is one of batchrun's top-level modules, and every code span naming a ``.py`` file is checked.
"""

from __future__ import annotations

import ast
import importlib
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "batchrun"
DOCS = ROOT / "docs"

ROLE = re.compile(r":(?:py:)?(mod|class|func|meth|data|attr|exc|obj|const):`([^`]+)`")
LITERAL = re.compile(r"``([^`]+)``")
CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
DOTTED_BATCHRUN = re.compile(r"\bbatchrun(?:\.[A-Za-z_]\w*)+")
# Not names but files: batchrun.toml, batchrun.db.
FILE_SUFFIXES = {"csv", "db", "html", "json", "jsonl", "key", "md", "py", "toml", "txt", "yml"}
# The page that may also write batchrun's modules without the package: `input.sources`.
SHORT_NAMES_PAGE = "architecture.md"
PY_PATH = re.compile(r"^[\w.-]+(?:/[\w.-]+)*\.py$")
IDENTIFIER_PATH = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$")


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    scope: dict[str, ast.AST | str] = field(default_factory=dict)

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Module-level statements, looking inside ``if``/``try`` blocks (``TYPE_CHECKING``)."""
    for statement in body:
        if isinstance(statement, ast.If):
            yield from _top_level(statement.body)
            yield from _top_level(statement.orelse)
        elif isinstance(statement, ast.Try):
            for block in (statement.body, statement.orelse, statement.finalbody):
                yield from _top_level(block)
            for handler in statement.handlers:
                yield from _top_level(handler.body)
        else:
            yield statement


def _targets(statement: ast.stmt) -> list[str]:
    if isinstance(statement, ast.Assign):
        names = []
        for target in statement.targets:
            elements = target.elts if isinstance(target, ast.Tuple) else [target]
            names += [element.id for element in elements if isinstance(element, ast.Name)]
        return names
    if isinstance(statement, (ast.AnnAssign, ast.AugAssign)) and isinstance(
        statement.target, ast.Name
    ):
        return [statement.target.id]
    return []


def _build_scope(module: Module) -> None:
    for statement in _top_level(module.tree.body):
        if isinstance(statement, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            module.scope[statement.name] = statement
        elif isinstance(statement, ast.Import):
            for alias in statement.names:
                if alias.asname:
                    module.scope[alias.asname] = alias.name
                else:
                    top = alias.name.partition(".")[0]
                    module.scope[top] = top
        elif isinstance(statement, ast.ImportFrom):
            source = _absolute(module, statement)
            for alias in statement.names:
                module.scope[alias.asname or alias.name] = f"{source}.{alias.name}"
        else:
            for name in _targets(statement):
                module.scope[name] = statement


@cache
def modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        module = Module(
            name=_module_name(path),
            path=path,
            is_package=path.name == "__init__.py",
            tree=ast.parse(path.read_text(), filename=str(path)),
        )
        _build_scope(module)
        found[module.name] = module
    return found


def _class_members(node: ast.ClassDef) -> set[str]:
    members = set()
    for statement in _top_level(node.body):
        if isinstance(statement, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            members.add(statement.name)
        else:
            members.update(_targets(statement))
    for inner in ast.walk(node):
        # Instance attributes: self.x = ... in any method.
        if (
            isinstance(inner, ast.Attribute)
            and isinstance(inner.ctx, ast.Store)
            and isinstance(inner.value, ast.Name)
            and inner.value.id == "self"
        ):
            members.add(inner.attr)
    return members


def _dotted(expression: ast.expr) -> str | None:
    if isinstance(expression, ast.Name):
        return expression.id
    if isinstance(expression, ast.Attribute):
        base = _dotted(expression.value)
        return f"{base}.{expression.attr}" if base else None
    if isinstance(expression, ast.Subscript):  # Generic[T], Protocol[T]
        return _dotted(expression.value)
    return None


def _qualify(module: Module, dotted: str) -> str | None:
    """The absolute name of ``dotted`` as written in ``module``, if its first part is bound."""
    first, _, rest = dotted.partition(".")
    binding = module.scope.get(first)
    if binding is None:
        return None
    base = binding if isinstance(binding, str) else f"{module.name}.{first}"
    return f"{base}.{rest}" if rest else base


def _by_import(dotted: str) -> bool:
    """The last resort: import the longest importable prefix and walk the attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(value, name):
                return False
            value = getattr(value, name)
        return True
    return False


def _in_class(module: Module, node: ast.ClassDef, rest: list[str], depth: int) -> bool:
    if not rest:
        return True
    for statement in _top_level(node.body):
        if isinstance(statement, ast.ClassDef) and statement.name == rest[0]:
            return _in_class(module, statement, rest[1:], depth)
    if rest[0] in _class_members(node):
        return len(rest) == 1
    for base in node.bases:
        written = _dotted(base)
        qualified = _qualify(module, written) if written else None
        if qualified is None and written and written.isidentifier():
            qualified = f"builtins.{written}"
        if qualified and resolves(".".join([qualified, *rest]), depth + 1):
            return True
    return False


def _in_module(module: Module, rest: list[str], depth: int) -> bool:
    if not rest:
        return True
    submodule = modules().get(f"{module.name}.{rest[0]}")
    if submodule is not None:
        return _in_module(submodule, rest[1:], depth)
    binding = module.scope.get(rest[0])
    if isinstance(binding, str):
        return resolves(".".join([binding, *rest[1:]]), depth + 1)
    if isinstance(binding, ast.ClassDef):
        return _in_class(module, binding, rest[1:], depth)
    if binding is not None:
        return len(rest) == 1
    # Not in the source: a module __getattr__ may still provide it.
    return "__getattr__" in module.scope and _by_import(".".join([module.name, *rest]))


def resolves(dotted: str, depth: int = 0) -> bool:
    """Does the absolute name ``dotted`` (a module, or a name in one) exist?"""
    if depth > 20:
        return False
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = modules().get(".".join(parts[:cut]))
        if module is not None:
            return _in_module(module, parts[cut:], depth)
    if parts[0] == "batchrun":
        return False
    return _by_import(dotted)


def _target(text: str) -> str:
    if text.endswith(">") and "<" in text:
        text = text[text.rindex("<") + 1 : -1]
    return text.strip().lstrip("~").lstrip(".").removesuffix("()")


def resolves_from(module: Module, enclosing: ast.ClassDef | None, text: str) -> bool:
    """Resolve a reference written in ``module`` (inside class ``enclosing``) as Sphinx would."""
    target = _target(text)
    parts = target.split(".")
    if enclosing is not None and _in_class(module, enclosing, parts, 0):
        return True
    return (
        _in_module(module, parts, 0) or resolves(f"{module.package}.{target}") or resolves(target)
    )


def _docstrings(
    tree: ast.Module,
) -> Iterator[tuple[str, int, ast.ClassDef | None]]:
    """Each docstring with its line and the class it sits in (or is)."""

    def visit(
        node: ast.AST, enclosing: ast.ClassDef | None
    ) -> Iterator[tuple[str, int, ast.ClassDef | None]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = child if isinstance(child, ast.ClassDef) else enclosing
                docstring = ast.get_docstring(child, clean=False)
                if docstring:
                    yield docstring, child.body[0].lineno, inner
                yield from visit(child, inner)
            elif not isinstance(child, ast.expr):
                yield from visit(child, enclosing)

    docstring = ast.get_docstring(tree, clean=False)
    if docstring:
        yield docstring, 1, None
    yield from visit(tree, None)


def _literal_paths(text: str) -> Iterator[str]:
    """``batchrun.x.y`` names, ``x/y.py`` files, and ``x.y`` names when ``x`` is one of
    batchrun's subpackages (``transport.http``), written as literals in a docstring."""
    for literal in LITERAL.findall(text):
        literal = literal.strip()
        if _is_file_name(literal):
            if PY_PATH.match(literal) and "/" in literal:
                yield literal
        elif DOTTED_BATCHRUN.fullmatch(literal):
            yield literal
        elif IDENTIFIER_PATH.match(literal) and literal.split(".")[0] in SUBPACKAGES:
            yield f"batchrun.{literal}"


def _is_file_name(dotted: str) -> bool:
    return dotted.rpartition(".")[2] in FILE_SUFFIXES


def _file_exists(path: str) -> bool:
    return (ROOT / path).is_file() or (PACKAGE / path).is_file()


def _broken(problems: list[str]) -> str:
    return "\n".join(problems)


def test_every_module_is_named_in_its_packages_docstring() -> None:
    """A package docstring says what it holds: each module or subpackage in it appears there
    as a literal (``name``), a file (``name.py``) or a :mod: reference."""
    unnamed = []
    for package in modules().values():
        if not package.is_package or package.name == "batchrun":
            continue
        docstring = ast.get_docstring(package.tree) or ""
        named = set(LITERAL.findall(docstring))
        named |= {_target(text).rpartition(".")[2] for _, text in ROLE.findall(docstring)}
        for child in modules().values():
            parent, _, last = child.name.rpartition(".")
            if parent != package.name:
                continue
            if not named & {last, f"{last}.py", f"{last}/", child.name}:
                unnamed.append(f"{package.path.relative_to(ROOT)}: ``{last}`` is not named")

    assert not unnamed, _broken(unnamed)


def test_every_reference_in_a_docstring_resolves() -> None:
    broken = []
    for module in modules().values():
        where = module.path.relative_to(ROOT)
        for docstring, line, enclosing in _docstrings(module.tree):
            for role, text in ROLE.findall(docstring):
                if not resolves_from(module, enclosing, text):
                    broken.append(f"{where}:{line}: :{role}:`{text}` names nothing")
            for path in _literal_paths(docstring):
                exists = _file_exists(path) if path.endswith(".py") else resolves(path)
                if not exists:
                    broken.append(f"{where}:{line}: ``{path}`` names nothing")

    assert not broken, _broken(broken)


TOP_LEVEL = {name.rpartition(".")[2] for name in modules() if name.count(".") == 1}
SUBPACKAGES = {name for name in TOP_LEVEL if modules()[f"batchrun.{name}"].is_package}


def _doc_references(text: str, short_names: bool) -> Iterator[str]:
    """What a docs page names: ``batchrun.x.y`` anywhere, ``.py`` files in code spans, and
    with ``short_names`` also ``x.y`` in a code span when ``x`` is one of batchrun's
    top-level modules (elsewhere ``limits.MODEL`` is a config key, not a module)."""
    for match in DOTTED_BATCHRUN.finditer(text):
        if not _is_file_name(match.group()):
            yield match.group()
    for span in CODE_SPAN.findall(text):
        span = span.strip()
        if PY_PATH.match(span) and "/" in span:
            yield span
        elif (
            short_names
            and IDENTIFIER_PATH.match(span)
            and span.split(".")[0] in TOP_LEVEL
            and not _is_file_name(span)
        ):
            yield f"batchrun.{span}"
    for _, text_ in ROLE.findall(text):
        yield _target(text_)


def test_every_module_path_in_the_docs_resolves() -> None:
    broken = []
    for page in sorted(DOCS.glob("*.md")):
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            for reference in _doc_references(line, page.name == SHORT_NAMES_PAGE):
                exists = (
                    _file_exists(reference) if reference.endswith(".py") else resolves(reference)
                )
                if not exists:
                    broken.append(f"{page.relative_to(ROOT)}:{number}: {reference} names nothing")

    assert not broken, _broken(broken)


def _layout_entries(page: str) -> list[Path]:
    """The files and folders the layout on the architecture page lists: indented entries
    are inside ``batchrun/``, the others at the top of the repository."""
    section = page.split("\n## The layout\n", 1)[1]
    picture = section.split("```text\n", 1)[1].split("```", 1)[0]
    entries = []
    for line in picture.splitlines():
        if match := re.match(r"^(  )?([\w.]+/?)(?:\s|$)", line):
            inside, name = match.groups()
            entries.append((PACKAGE if inside else ROOT) / name)
    return entries


def test_the_architecture_pages_layout_lists_what_is_there() -> None:
    """Every file and folder the layout names exists, and every subpackage is in it."""
    listed = _layout_entries((DOCS / "architecture.md").read_text())
    subpackages = {path.parent for path in PACKAGE.glob("*/__init__.py")}

    assert [path for path in listed if not path.exists()] == []
    assert sorted(subpackages - set(listed)) == []


def _drawn_layers(page: str) -> list[set[str]]:
    """The layers drawn on the architecture page: the top-level packages of each row of the
    first picture under "## Layers", top to bottom."""
    section = page.split("\n## Layers\n", 1)[1]
    picture = section.split("```text\n", 1)[1].split("```", 1)[0]
    rows = []
    for line in picture.splitlines():
        if line.startswith("│"):
            rows.append(set(re.findall(r"\bbatchrun\.\w+\b(?!\.)", line)))
    return rows


def test_the_architecture_page_draws_the_layers_the_contract_checks() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    (layers,) = [contract for contract in contracts if contract["type"] == "layers"]
    checked = [{name.strip() for name in layer.split("|")} for layer in layers["layers"]]

    assert _drawn_layers((DOCS / "architecture.md").read_text()) == checked


def test_the_checker_tells_a_real_name_from_a_missing_one() -> None:
    """The resolver can fail: a moved module, a renamed class or method does not resolve."""
    session = modules()["batchrun.errors"]
    assert resolves("batchrun.errors.BatchrunError")
    assert resolves("batchrun.client.Client")
    assert resolves_from(session, None, "~batchrun.errors.BatchNotFoundError")
    assert not resolves("batchrun.errors.NoSuchError")
    assert not resolves("batchrun.no_such_module")
    assert not resolves("batchrun.client.Client.no_such_method")
    assert not resolves_from(session, None, "NoSuchName")
    # Literals in docstrings and code spans in docs are read too.
    assert list(_literal_paths("see ``transport.gone`` and ``store/gone.py``")) == [
        "batchrun.transport.gone",
        "store/gone.py",
    ]
    assert not resolves("batchrun.transport.gone")
    assert not _file_exists("store/gone.py")
    assert list(_doc_references("`batchrun.ops.gone` in `ops/gone.py`", False)) == [
        "batchrun.ops.gone",
        "ops/gone.py",
    ]
