"""The layering is checked, not claimed: the import contracts in pyproject.toml hold, and
only the edges read the environment."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "batchrun"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# The edges: the CLI, and the public API whose defaults are the CLI's.
ENV_READERS = ("cli/", "client.py")


def test_the_import_contracts_hold() -> None:
    checked = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        check=False,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 broken" in checked.stdout


def _reads_environment(tree: ast.AST) -> list[int]:
    """Lines that read os.environ or call os.getenv / os.putenv."""
    lines = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and node.attr in ("environ", "getenv", "environb")
        ):
            lines.append(node.lineno)
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in ("environ", "getenv") for alias in node.names)
        ):
            lines.append(node.lineno)
    return lines


def test_only_the_cli_and_the_public_api_read_the_environment() -> None:
    readers = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(ENV_READERS):
            continue
        if found := _reads_environment(ast.parse(path.read_text(), filename=str(path))):
            readers[relative] = found

    assert readers == {}, "pass the environment down instead of reading it here"


def test_every_subpackage_says_what_it_holds_and_may_import() -> None:
    silent = []
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        if ("Holds:" not in doc and "holds" not in doc.lower()) or "import" not in doc.lower():
            silent.append(init.parent.name)

    assert silent == []


def test_the_top_of_the_package_holds_about_a_dozen_entries() -> None:
    entries = sorted(
        p.name for p in PACKAGE.iterdir() if p.name != "__pycache__" and not p.name.startswith(".")
    )

    # The style guide's own layout (batch_lane/ and, to come, server/ included), with
    # __main__.py, py.typed, client.py (the public API), registry.py and structured/ (answer
    # schemas: shared by input, which shapes requests, and dispatch, which checks answers).
    assert len(entries) <= 20, entries


def test_every_run_module_of_ops_is_held_to_the_views_contract() -> None:
    # The contract names the run modules one by one: a new one must join it.
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    (contract,) = [
        contract
        for contract in config["tool"]["importlinter"]["contracts"]
        if contract.get("forbidden_modules") == ["batchrun.ops.views"]
    ]
    run_modules = {
        f"batchrun.ops.{path.stem}"
        for path in (PACKAGE / "ops").glob("*.py")
        if path.name != "__init__.py"
    }
    run_modules |= {
        f"batchrun.ops.{path.name}"
        for path in (PACKAGE / "ops").iterdir()
        if (path / "__init__.py").exists() and path.name != "views"
    }

    assert set(contract["source_modules"]) == run_modules
