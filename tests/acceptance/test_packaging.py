"""The distribution as pip builds and installs it: a name of its own on the package index, the
`batchrun` import package and command, and install hints that name what pip can install."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.acceptance

ROOT = Path(__file__).resolve().parents[2]
# `pip install batchrun` installs an unrelated project (0.0.13, 0.0.14 on PyPI).
TAKEN_ON_PYPI = {"batchrun"}


def distribution_name() -> str:
    project: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = project["name"]
    assert isinstance(name, str)
    return name


def test_the_distribution_is_not_named_after_the_unrelated_project_on_pypi() -> None:
    name = distribution_name()

    assert re.sub(r"[-_.]+", "-", name).lower() not in TAKEN_ON_PYPI


def test_the_wheel_installs_the_batchrun_package_and_command_under_its_own_name(
    tmp_path: Path,
) -> None:
    name = distribution_name()
    assert name.lower() not in TAKEN_ON_PYPI
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        files = archive.namelist()
        (metadata,) = [f for f in files if f.endswith(".dist-info/METADATA")]
        (entry_points,) = [f for f in files if f.endswith(".dist-info/entry_points.txt")]
        assert f"Name: {name}\n" in archive.read(metadata).decode()
        assert "batchrun = batchrun.cli:main" in archive.read(entry_points).decode()
    assert "batchrun/__init__.py" in files

    # Installed into a directory of its own, ahead of this checkout on the path (and run from
    # elsewhere, since `python -c` puts the working directory first): the command, the import
    # and the version lookup under the new name all come from the wheel.
    target = tmp_path / "site"
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    version = subprocess.run(
        [str(target / "bin" / "batchrun"), "--version"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import batchrun, importlib.metadata as m; "
            f"print(batchrun.__file__); print(m.version({name!r}) == batchrun.__version__)",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert version.returncode == 0, version.stderr
    assert re.fullmatch(r"batchrun \d+\.\d+\.\d+\S*\n", version.stdout)
    assert probe.returncode == 0, probe.stderr
    where, same_version = probe.stdout.splitlines()
    assert Path(where).is_relative_to(target)
    assert same_version == "True"


# `pip install 'batchrun[postgres]'`, `pip install -U batchrun`, `pip install batchrun`: any
# hint naming the taken distribution (the command and the import stay `batchrun`).
_WRONG_HINT = re.compile(r"pip install (?:-\S+ )*['\"]?batchrun(?![-\w])")


@pytest.mark.parametrize(
    "where", ["README.md", "pyproject.toml", "docs", "batchrun"], ids=lambda where: where
)
def test_every_install_hint_names_a_distribution_pip_can_install(where: str) -> None:
    root = ROOT / where
    paths = [root] if root.is_file() else sorted(root.rglob("*.py")) + sorted(root.rglob("*.md"))
    wrong = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in paths
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if _WRONG_HINT.search(line)
    ]

    assert wrong == []
