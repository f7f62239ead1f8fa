"""The lane names live once, in :class:`batchrun.records.Lane`: no module of batchrun spells
``"realtime"``, ``"batch"`` or ``"auto"`` where it means a lane.

Where a lane literal means a lane: a constant or a field default (``REALTIME = "realtime"``,
``lane: str = "realtime"``), a parameter default, a ``lane=`` keyword argument, a comparison
with something named for a lane (``batch.lane == "realtime"``, ``lanes.get(b) != "batch"``)
and a lookup in something named for lanes (``per_lane.get("batch")``, ``lanes["batch"]``).
"batch" in its other meanings (``("batch", batch_id)``, the word in a sentence) is not
flagged. Exempt: ``records.py`` (where the names live), the simulator (an independent
oracle, with its own words) and the CLI's option defaults (typer shows them in ``--help``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from batchrun.records import Lane

PACKAGE = Path(__file__).resolve().parents[2] / "batchrun"
LANE_NAMES = frozenset(lane.value for lane in Lane)
EXEMPT = ("records.py", "simulator/")


def _is_lane(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value in LANE_NAMES


def _holds_lane(node: ast.AST) -> bool:
    """A lane literal, or a tuple, list or set of them (``lane in ("batch", "auto")``)."""
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_is_lane(element) for element in node.elts)
    return _is_lane(node)


def _named_for_lanes(node: ast.AST) -> bool:
    """``lane``, ``x.lane``, ``per_lane``, ``lanes.get(...)``, ``lanes[...]``,
    ``set(cost.by_lane)``."""
    match node:
        case ast.Name(id=name) | ast.Attribute(attr=name):
            return "lane" in name.lower()
        case ast.Subscript(value=inner):
            return _named_for_lanes(inner)
        case ast.Call(func=func, args=args):
            inner = [func.value] if isinstance(func, ast.Attribute) else []
            return any(map(_named_for_lanes, [*inner, *args]))
    return False


def _lane_use(node: ast.AST, *, cli: bool) -> str | None:
    """What ``node`` does with a lane literal, if it uses one as a lane."""
    match node:
        case ast.FunctionDef() | ast.AsyncFunctionDef() | ast.Lambda() if not cli:
            defaults = [*node.args.defaults, *node.args.kw_defaults]
            return "a parameter default" if any(map(_is_lane, defaults)) else None
        case ast.keyword(arg=str(arg), value=value) if "lane" in arg and _is_lane(value):
            return f"the keyword argument {arg}="
        case ast.Compare(left=left, comparators=comparators):
            operands = [left, *comparators]
            named = any(map(_named_for_lanes, operands)) and any(map(_holds_lane, operands))
            return "a comparison with a lane" if named else None
        case ast.Call(func=ast.Attribute(value=owner, attr=attr), args=args):
            found = _named_for_lanes(owner) and any(map(_is_lane, args))
            return f"a lookup: .{attr}()" if found else None
        case ast.Subscript(value=owner, slice=key):
            return "a lookup: [...]" if _named_for_lanes(owner) and _is_lane(key) else None
    return None


def lane_literals(source: str, *, cli: bool = False) -> Iterator[tuple[int, str]]:
    """(line, what) for each lane literal in ``source`` used as a lane; ``cli``: parameter
    defaults are allowed (the CLI's option defaults)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef):
            for statement in node.body:
                if isinstance(statement, ast.Assign | ast.AnnAssign) and _is_lane(statement.value):
                    yield statement.lineno, "a constant or field default"
        elif (what := _lane_use(node, cli=cli)) is not None:
            yield getattr(node, "lineno", 0), what


def test_no_module_spells_a_lane_name_outside_records() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(EXEMPT):
            continue
        cli = relative.startswith("cli/")
        for line, what in lane_literals(path.read_text(), cli=cli):
            found.append(f"batchrun/{relative}:{line}: {what}")

    assert found == [], "use batchrun.records.Lane instead of the string"


def test_the_scan_finds_each_way_of_spelling_a_lane() -> None:
    source = """
REALTIME = "realtime"

class Row:
    lane: str = "batch"

def send(request, lane="auto"): ...

finish(request, lane="realtime")
if row.lane == "batch" or lane in ("auto", "batch") or lanes.get(b, "realtime") != x: ...
per_lane.get("batch")
lanes["auto"]
if set(cost.by_lane) <= {"realtime"}: ...
"""
    found = sorted(line for line, _ in lane_literals(source))

    assert found == [2, 5, 7, 9, 10, 10, 10, 11, 12, 13]


def test_batch_in_its_other_meanings_and_cli_defaults_are_not_lanes() -> None:
    source = """
key = ("batch", batch_id)
print(f"deleted {plural(n, 'batch')}")
if kind == "batch": ...
cards = {"batch": card}

def lane_option(lane: str = "realtime"): ...
"""
    assert list(lane_literals(source, cli=True)) == []
